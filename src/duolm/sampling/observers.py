"""What a sampler reports while it runs: k-diffusion's `callback`, as one small object.

Every sampler takes `observer=` and calls

- `observer.step(i, x)` with each state it reaches: i = 0 the prior draw (with held positions in
  place), i = k the state after its k-th step (a step that changes nothing, as the first-hitting
  sampler skips, reports the same x again, so a trajectory has one frame per step);
- `observer.report(**counts)` once at its end: denoiser_calls, cached_calls, and what else it counts
  (committed_per_step, query_positions, commit_calls, blocks).

The base Observer keeps nothing (samplers need no `if` around it); Recorder keeps the states (for
`duolm view`) and the counts (for the samples' JSON); anything else (a live progress view, a server
streaming drafts) is another subclass.
"""
from __future__ import annotations

import torch


class Observer:
    """Keeps nothing: the default. wants_states: it keeps the states (a strategy that cannot report
    them refuses such an observer instead of leaving it empty)."""

    wants_states = False

    def step(self, i: int, x: torch.Tensor) -> None:
        """x (B, L): the state after step i (0: the prior draw)."""

    def report(self, **counts) -> None:
        """The sampler's counts, at its end."""


NOTHING = Observer()


class Recorder(Observer):
    """Keeps the states (when asked: `states=True`) on the CPU and the counts of the last report."""

    def __init__(self, states: bool = False):
        self.states: list[torch.Tensor] | None = [] if states else None
        self.wants_states = states
        self.counts: dict = {}

    def step(self, i: int, x: torch.Tensor) -> None:
        if self.states is not None:
            self.states.append(x.cpu())

    def report(self, **counts) -> None:
        self.counts.update(counts)


class CountsOnly(Observer):
    """Passes `inner` the counts only (semi-autoregressive windows: each window's states are not a
    trajectory of the whole sequence)."""

    def __init__(self, inner: Observer):
        self.inner = inner

    def report(self, **counts) -> None:
        self.inner.report(**counts)


__all__ = ["NOTHING", "CountsOnly", "Observer", "Recorder"]
