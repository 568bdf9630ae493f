"""Ctrl-C during training: finish the optimizer step, write the checkpoint, say how to resume."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

import lightning.pytorch as pl

from duolm.training import StoppedAtOnce


class GracefulStop(pl.Callback):
    """The first SIGINT asks every rank to stop after the current optimizer step (the trainer then
    writes last.ckpt as at the end of any run); a second one stops at once (StoppedAtOnce)."""

    def __init__(self):
        self.requested = False
        self.stopped = False

    def _handler(self, signum, frame):
        if self.requested:
            raise StoppedAtOnce("stopped at once (a second Ctrl-C), in the middle of a step")
        self.requested = True
        print("\nduolm: stopping after this step and writing a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self):
        """SIGINT goes to this callback while the block runs (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, old)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # in the middle of an accumulated step
        # every rank takes part each step, so all stop at the same step when any was interrupted
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            trainer.should_stop = True
            self.stopped = True
