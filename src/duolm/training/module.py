"""LightningModule that trains any objective's backbone; the objective supplies every loss.

The module knows nothing of which objective it runs (plain NELBO, a curriculum, distillation):
it draws the step's noise generator, calls ``objective.token_loss`` and logs what the
objective reports. Optimisation, EMA, validation and checkpoint state live here.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from duolm.core.conditioning import with_labels
from duolm.models.ema import EMA
from duolm.training import NonFiniteLossError
from duolm.training.objectives import Objective


def step_generator(seed: int, step: int, micro_batch: int, rank: int, device="cpu") -> torch.Generator:
    """The noise of one micro-batch, keyed by (seed, step, micro-batch, rank): a resumed run draws
    exactly what the uninterrupted run would have drawn."""
    key = ((seed * 1_000_003 + step) * 1_009 + micro_batch) * 65_537 + rank
    return torch.Generator(device=device).manual_seed(key % (2 ** 63))


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
    def __init__(self, objective: Objective, backbone: torch.nn.Module, *, lr: float = 3e-4, betas=(0.9, 0.999),
                 weight_decay: float = 0.0, adam_eps: float = 1e-8, warmup_steps: int = 0,
                 lr_schedule: str = "constant", max_steps: int = 1000, ema_decay: float = 0.9999,
                 global_batch_size: int = 64, eval_time_samples: int = 1, export_config: dict | None = None,
                 seed: int = 0, augment=None):
        super().__init__()
        self.objective = objective  # duolm.training.objectives: Nelbo, CurriculumNelbo or Distillation
        self.method = objective.method
        self.backbone = backbone
        self.ema = EMA(self.backbone, ema_decay) if ema_decay > 0 else None
        self.hp = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=adam_eps,
                       warmup_steps=warmup_steps, lr_schedule=lr_schedule, max_steps=max_steps)
        self.global_batch_size = global_batch_size
        self.eval_time_samples = eval_time_samples
        self._val = None
        self.seed = seed
        self.export_config = export_config or {}  # what a loader needs to rebuild the model
        self.augment = augment  # (x0, generator) -> x0: the data's training augmentation (image flips)

    # --- training ----------------------------------------------------------------------
    def _layout(self) -> tuple[int, int, int]:
        """(accumulation steps, world size, rank); (1, 1, 0) outside a trainer."""
        if self._trainer is None:
            return 1, 1, 0
        t = self.trainer
        return t.accumulate_grad_batches, t.world_size, t.global_rank

    def _global_index(self, batch_idx: int, n: int) -> torch.Tensor:
        """Each example's position in the global batch, matching ResumableSampler's interleaving."""
        accum, world, rank = self._layout()
        micro = batch_idx % accum
        return (micro * n + torch.arange(n, device=self.device)) * world + rank

    def training_step(self, batch, batch_idx):
        # image blocks carry their class label, instruction blocks their prompt (held clean)
        x0, valid, labels, clean = batch["ids"], batch["valid"], batch.get("label"), batch.get("clean")
        accum, _, rank = self._layout()
        g = step_generator(self.seed, self.global_step, batch_idx % accum, rank, self.device)
        if self.augment is not None:  # its own stream, so the loss draws what they would without it
            x0 = self.augment(x0, generator=step_generator(self.seed + 1, self.global_step, batch_idx % accum, rank,
                                                           self.device))
        self.backbone.set_step(self.global_step)  # a no-op unless its attention depends on the step (annealing)
        loss = self.objective.token_loss(self.backbone, x0, valid, step=self.global_step, generator=g,
                                         index=self._global_index(batch_idx, x0.shape[0]),
                                         total=self.global_batch_size, ema=self.ema, labels=labels,
                                         clean=clean).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the training loss became {loss.item()} at step {self.global_step}; "
                                     f"training stopped")
        if self._trainer is not None:
            for name, value in self.objective.metrics(self.global_step).items():
                self.log(name, value, on_step=True, on_epoch=False)
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
        x0, valid, clean = batch["ids"], batch["valid"], batch.get("clean")
        backbone = with_labels(self.backbone, batch.get("label"))  # the NELBO given the true class
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        for _ in range(self.eval_time_samples):  # an instruction's: of its response given its prompt
            nelbo, count = self.method.sequence_nelbo(backbone, x0, valid, generator=g, clean=clean)
            self._val[0] += nelbo.sum() / self.eval_time_samples
        self._val[1] += count.sum()

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
        checkpoint["duolm"] = self.checkpoint_config()
        state = self.objective.state_dict()  # e.g. DCD's teacher and its round (not a model weight)
        if state:
            checkpoint[self.objective.state_key] = state
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()
        dm = self.trainer.datamodule if self._trainer is not None else None
        position = dm.stream_position(self.global_step) if hasattr(dm, "stream_position") else None
        if position is not None:  # every rank's place in its stream (a collective: all ranks get here)
            gathered = self.all_gather(torch.tensor(position, dtype=torch.long, device=self.device))
            checkpoint["stream_positions"] = gathered.reshape(-1, 3).cpu().tolist()

    def checkpoint_config(self) -> dict:
        """What a checkpoint records to rebuild the model (and to tell whether a resume is the same run)."""
        return {**self.export_config, "model": self.backbone.config.to_dict()}

    def on_load_checkpoint(self, checkpoint):
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        if self.objective.state_key in checkpoint:
            self.objective.load_state_dict(checkpoint[self.objective.state_key])
        dm = self.trainer.datamodule if self._trainer is not None else None
        if "stream_positions" in checkpoint and dm is not None:
            dm.resume_positions = checkpoint["stream_positions"]

    def ema_backbone(self) -> torch.nn.Module:
        """A copy of the backbone holding the EMA weights (the training weights without EMA)."""
        import copy

        net = copy.deepcopy(self.backbone)
        if self.ema is not None:
            self.ema.copy_to(net)
        return net.eval()
