"""The training progress bar: step / max_steps, loss, tokens per second and the time left."""
from __future__ import annotations

import time

import lightning.pytorch as pl

from duolm.io.progress import progress_bar


class StepProgress(pl.Callback):
    """One progress bar over optimizer steps on rank 0 (Lightning's bar counts batches of an endless
    epoch and shows 'Epoch 0/-2')."""

    def __init__(self, tokens_per_step: int):
        self.tokens_per_step = tokens_per_step
        self.bar = None

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.bar = progress_bar(total=trainer.max_steps, initial=trainer.global_step, desc="training", unit="step")
            self.t0, self.s0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.bar is None or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        self.bar.update(trainer.global_step - self.bar.n)
        post = {}
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            post["loss"] = f"{float(loss):.3f}"
        val = trainer.callback_metrics.get("val/nll")
        if val is not None:
            post["val"] = f"{float(val):.3f}"
        seconds = time.perf_counter() - self.t0
        if seconds > 0 and trainer.global_step > self.s0:
            post["tok/s"] = f"{(trainer.global_step - self.s0) * self.tokens_per_step / seconds:,.0f}"
        self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
