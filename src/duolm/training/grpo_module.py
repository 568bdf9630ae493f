"""LightningModule for group-relative policy optimisation (duolm.rl) of any duolm model.

A training step takes a batch of prompts (indices into the prompt set), samples G completions of
each (duolm.rl.groups), scores them with `score`, and takes `iterations` clipped-surrogate gradient
steps on them (duolm.rl.update) by manual optimisation: Lightning supplies the devices, precision,
checkpoints and loggers, duolm.rl the loss. One RL step is `iterations` optimizer steps, so
``trainer.max_steps`` = RL steps x iterations and ``global_step // iterations`` is the RL step.

Every draw of a step (its completions and the ELBO's (t, x_t)) comes from a generator keyed by
(seed, RL step, rank), and the prompts from a resumable sampler, so a resumed run equals an
uninterrupted one. The reference model (for the KL penalty) is a frozen copy of the starting
policy, refreshed from the policy every `reference_sync` RL steps (0: kept); it is saved in the
checkpoint with the policy.

Validation samples one completion per held-out prompt and reports the share `score` accepts.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import lightning.pytorch as pl
import torch

from duolm.rl.groups import Groups, sample_groups
from duolm.rl.update import grpo_update
from duolm.training import NonFiniteLossError
from duolm.training.module import lr_lambda, step_generator

# score(prompt indices, groups) -> {"reward": (P, G), "accuracy": (P, G)} (tensors), and optionally
# "example": one completion's text to log
Score = Callable[[list[int], Groups], dict]


class LitGRPO(pl.LightningModule):
    def __init__(self, method, backbone: torch.nn.Module, prompts: list[list[int]], score: Score, spec, *,
                 group: int, length: int, bos_id: int, eos_id: int | None, estimator: str = "elbo", samples: int = 1,
                 iterations: int = 1, clip: float = 0.2, beta: float = 0.0, scale: str = "std",
                 reference_sync: int = 0, valid_prompts: list[list[int]] | None = None, valid_score: Score | None = None,
                 valid_spec=None, lr: float = 1e-5, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 adam_eps: float = 1e-8, warmup_steps: int = 0, max_steps: int = 100, gradient_clip: float = 1.0,
                 seed: int = 0, export_config: dict | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.method, self.backbone = method, backbone
        # the KL's reference: a frozen copy (a submodule, so it follows the device and is checkpointed)
        self.reference = copy.deepcopy(backbone).requires_grad_(False).eval() if beta > 0 else None
        self.prompts, self.score, self.spec = prompts, score, spec
        self.valid_prompts, self.valid_score = valid_prompts or [], valid_score
        self.valid_spec = valid_spec or spec
        self.group, self.length, self.bos_id, self.eos_id = group, length, bos_id, eos_id
        self.rl = dict(estimator=estimator, samples=samples, iterations=iterations, clip=clip, beta=beta, scale=scale)
        self.reference_sync = reference_sync
        self.hp = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=adam_eps, warmup_steps=warmup_steps,
                       max_steps=max_steps)
        self.gradient_clip = gradient_clip
        self.seed = seed
        self.export_config = export_config or {}
        self.last_metrics: dict = {}
        self._val = None

    # --- one RL step ----------------------------------------------------------------------
    @property
    def rl_step(self) -> int:
        return self.global_step // self.rl["iterations"]

    def _rank(self) -> int:
        return self.trainer.global_rank if self._trainer is not None else 0

    def training_step(self, batch, batch_idx):
        step = self.rl_step
        if self.reference is not None and self.reference_sync and step > 0 and step % self.reference_sync == 0:
            self.reference.load_state_dict(self.backbone.state_dict())
        indices = [int(i) for i in batch]
        g = step_generator(self.seed, step, 0, self._rank(), self.device)
        groups = sample_groups(self.method, self.backbone, [self.prompts[i] for i in indices], self.group, self.length,
                               self.spec, bos_id=self.bos_id, eos_id=self.eos_id, generator=g, device=self.device)
        scored = self.score(indices, groups)
        opt = self.optimizers()
        sched = self.lr_schedulers()

        def optimizer_step(loss):
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"the RL loss became {loss.item()} at step {step}; training stopped")
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if self.gradient_clip:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()

        metrics = grpo_update(self.method, self.backbone, None, groups, scored["reward"].to(self.device),
                              reference=self.reference, generator=g, optimizer_step=optimizer_step, **self.rl)
        metrics["accuracy"] = float(scored["accuracy"].double().mean())
        metrics["lr"] = float(sched.get_last_lr()[0])
        if self._trainer is not None:
            for name, value in metrics.items():
                self.log(f"rl/{name}", value, on_step=True, on_epoch=False, prog_bar=name in ("reward", "accuracy"))
        self.last_metrics = {"step": step + 1, **metrics,
                             **({"example": scored["example"]} if scored.get("example") is not None else {})}
        return None

    # --- validation: one completion per held-out prompt, scored ----------------------------
    def on_validation_epoch_start(self):
        self._val = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        indices = [int(i) for i in batch]
        g = torch.Generator(device=self.device).manual_seed(10_000 + batch_idx)
        groups = sample_groups(self.method, self.backbone, [self.valid_prompts[i] for i in indices], 1, self.length,
                               self.valid_spec, bos_id=self.bos_id, eos_id=self.eos_id, generator=g,
                               device=self.device)
        accuracy = self.valid_score(indices, groups)["accuracy"].double().reshape(-1)
        self._val += torch.stack([accuracy.sum(), torch.tensor(float(accuracy.numel()), dtype=torch.float64)]
                                 ).to(self.device)

    def on_validation_epoch_end(self):
        total = self.all_gather(self._val).reshape(-1, 2).sum(0)
        accuracy = (total[0] / total[1].clamp_min(1)).float()
        n = float(total[1])
        self.log("val/accuracy", accuracy, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log("val/accuracy_se", math.sqrt(max(float(accuracy) * (1 - float(accuracy)), 0.0) / max(n, 1.0)),
                 sync_dist=False)
        self.last_metrics = {**self.last_metrics, "valid_accuracy": float(accuracy), "valid_prompts": int(n)}

    # --- optimisation and checkpoint state --------------------------------------------------
    def configure_optimizers(self):
        hp = self.hp
        params = [p for p in self.backbone.parameters() if p.requires_grad]  # LoRA: the adapters only
        opt = torch.optim.AdamW(params, lr=hp["lr"], betas=hp["betas"], weight_decay=hp["weight_decay"], eps=hp["eps"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(hp["warmup_steps"], "constant", hp["max_steps"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def checkpoint_config(self) -> dict:
        """What a checkpoint records to rebuild the model (and to tell whether a resume is the same run)."""
        return {**self.export_config, "model": self.backbone.config.to_dict()}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["duolm"] = self.checkpoint_config()

    def policy(self) -> torch.nn.Module:
        """A copy of the policy's network, in eval mode (what the run's model folder holds)."""
        return copy.deepcopy(self.backbone).eval()


__all__ = ["LitGRPO", "Score"]
