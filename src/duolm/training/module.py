"""LightningModule that trains any method's backbone; the method supplies every loss."""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from duolm.distill import DeltaSchedule, Teacher, dcd_loss
from duolm.models.dit import DiT, DiTConfig
from duolm.models.ema import EMA
from duolm.operator import DiffusionTransform


class NonFiniteLossError(RuntimeError):
    pass


class Distiller:
    """DCD's state on the training side: the delta schedule, the operator and the frozen teacher."""

    def __init__(self, student, vocab_size: int, *, schedule: DeltaSchedule, kind: str = "kl-bwd",
                 gamma_min: float = -4.0, gamma_max: float = -1.0, teacher_from: str = "weights",
                 dtype=torch.float32):
        if teacher_from not in ("weights", "ema"):
            raise ValueError(f"distill.teacher_from must be 'weights' or 'ema', got {teacher_from!r}")
        self.schedule, self.kind, self.teacher_from, self.dtype = schedule, kind, teacher_from, dtype
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self.operator = DiffusionTransform(vocab_size)
        self.teacher = Teacher(student)


def lr_lambda(warmup_steps: int, schedule: str, max_steps: int, min_ratio: float = 0.1):
    """Linear warm-up, then constant or cosine decay to min_ratio of the peak."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class LitDiffusionLM(pl.LightningModule):
    def __init__(self, method, dit_config: DiTConfig, *, lr: float = 3e-4, betas=(0.9, 0.999),
                 weight_decay: float = 0.0, adam_eps: float = 1e-8, warmup_steps: int = 0,
                 lr_schedule: str = "constant", max_steps: int = 1000, ema_decay: float = 0.9999,
                 global_batch_size: int = 64, antithetic: bool = True, eval_time_samples: int = 1,
                 export_config: dict | None = None, seed: int = 0, curriculum=None, distiller=None):
        super().__init__()
        self.method = method
        self.backbone = DiT(dit_config)
        self.ema = EMA(self.backbone, ema_decay) if ema_decay > 0 else None
        self.hp = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=adam_eps,
                       warmup_steps=warmup_steps, lr_schedule=lr_schedule, max_steps=max_steps)
        self.global_batch_size = global_batch_size
        self.antithetic = antithetic
        self.eval_time_samples = eval_time_samples
        self._val = None
        self.seed = seed
        self.curriculum = curriculum  # duolm.curriculum.Curriculum or None (Duo's relaxed training inputs)
        self.distiller = distiller    # duolm.training.module.Distiller or None (DCD; the teacher is not a submodule)
        self.export_config = export_config or {}  # what a loader needs to rebuild the model

    # --- training ----------------------------------------------------------------------
    def _global_index(self, batch_idx: int, n: int) -> torch.Tensor:
        """Each example's position in the global batch, matching ResumableSampler's interleaving."""
        accum = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        micro = batch_idx % accum
        return (micro * n + torch.arange(n, device=self.device)) * world + rank

    def training_step(self, batch, batch_idx):
        x0, valid = batch
        t, g = None, None
        if self.method.process is not None:
            # noise keyed by (seed, step, micro-batch, rank): a resumed run draws exactly what the
            # uninterrupted run would have drawn
            accum = self.trainer.accumulate_grad_batches
            key = ((self.seed * 1_000_003 + self.global_step) * 1_009 + batch_idx % accum) * 65_537 \
                + self.trainer.global_rank
            g = torch.Generator(device=self.device).manual_seed(key % (2 ** 63))
            t = self.method.sample_times(x0.shape[0], antithetic=self.antithetic, device=self.device,
                                         index=self._global_index(batch_idx, x0.shape[0]),
                                         total=self.global_batch_size, generator=g)
        if self.distiller is not None:
            d = self.distiller
            d.teacher.maybe_refresh(self.global_step, d.schedule, self.backbone,
                                    self.ema if d.teacher_from == "ema" else None)
            delta = d.schedule.delta(self.global_step)
            loss = dcd_loss(self.method, self.backbone, d.teacher.net, x0, t, delta, operator=d.operator,
                            gamma_min=d.gamma_min, gamma_max=d.gamma_max, kind=d.kind, dtype=d.dtype,
                            generator=g, valid=valid).mean()
            self.log("train/delta", delta, on_step=True, on_epoch=False)
        elif self.curriculum is not None and self.curriculum.schedule.active(self.global_step):
            s = self.curriculum.schedule
            # the curriculum's t lives on its gamma band: stretch the drawn [eps, 1] back to [0, 1]
            t = (t - self.method.sampling_eps) / (1 - self.method.sampling_eps)
            loss = self.curriculum.token_loss(self.method, self.backbone, x0, valid, self.global_step, t=t,
                                              generator=g).mean()
            self.log("train/tau", s.tau(self.global_step), on_step=True, on_epoch=False)
        else:
            loss = self.method.token_loss(self.backbone, x0, valid, t, generator=g).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the training loss became {loss.item()} at step {self.global_step}; "
                                     f"training stopped and the last good checkpoint is kept")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is not None and (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            self.ema.update(self.backbone)

    # --- validation: the NELBO per token with the EMA weights ----------------------------
    def on_validation_epoch_start(self):
        self._val = [torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(2)]
        if self.ema is not None:
            self._ema_ctx = self.ema.swapped_in(self.backbone)
            self._ema_ctx.__enter__()

    def validation_step(self, batch, batch_idx):
        x0, valid = batch
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        for _ in range(self.eval_time_samples):
            out = self.method.token_loss(self.backbone, x0, valid, generator=g)
            prior = self.method.prior_kl(x0).to(self.device)
            self._val[0] += ((out.nll + prior) * out.weight).sum().double() / self.eval_time_samples
        self._val[1] += out.weight.sum().double()

    def on_validation_epoch_end(self):
        if self.ema is not None:
            self._ema_ctx.__exit__(None, None, None)
        total = self.all_gather(torch.stack(self._val)).reshape(-1, 2).sum(0)
        nll = (total[0] / total[1].clamp_min(1)).float()
        self.log("val/nll", nll, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log("val/bpt", nll / math.log(2), sync_dist=False)
        self.log("val/ppl", torch.exp(nll.clamp(max=30)), sync_dist=False)

    # --- optimisation and checkpoint state ---------------------------------------------
    def configure_optimizers(self):
        hp = self.hp
        opt = torch.optim.AdamW(self.backbone.parameters(), lr=hp["lr"], betas=hp["betas"],
                                weight_decay=hp["weight_decay"], eps=hp["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(hp["warmup_steps"], hp["lr_schedule"],
                                                                 hp["max_steps"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["duolm"] = {**self.export_config, "model": self.backbone.config.to_dict()}
        if self.distiller is not None:  # the teacher and its round, for resumption (not a model weight)
            checkpoint["distill"] = self.distiller.teacher.state_dict()
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        if self.distiller is not None and "distill" in checkpoint:
            self.distiller.teacher.load_state_dict(checkpoint["distill"])

    def ema_backbone(self) -> DiT:
        """A copy of the backbone holding the EMA weights (the training weights without EMA)."""
        import copy

        net = copy.deepcopy(self.backbone)
        if self.ema is not None:
            self.ema.copy_to(net)
        return net.eval()
