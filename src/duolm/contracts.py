"""The contracts the math is written against, as typing.Protocols (checked by tests/test_contracts.py).

- ``Schedule``: the signal level alpha(t) of a discrete diffusion, its derivative, its inverse.
- ``Process``: a forward process over ``num_states`` states (absorbing, uniform).
- ``Denoiser``: what every sampler calls: log p(x_0 | x_t) for tokens x_t at signal level alpha_t.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Schedule(Protocol):
    name: str
    eps: float

    def __call__(self, t: torch.Tensor):
        """ScheduleOutput(alpha, dalpha) at times t in [0, 1]; alpha(0) = 1, decreasing."""

    def inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        """The time t at which the schedule reaches alpha."""


@runtime_checkable
class Process(Protocol):
    kind: str          # 'absorbing' | 'uniform': a name for reports; behaviour asks the members below
    num_states: int    # the state space, the mask state included
    mask_id: int | None   # the absorbing state, or None (uniform: every state is a token)
    first_hitting: bool   # a token's unmasking time can be drawn up front (duolm.sampling.first_hitting)
    gaussian_dual: bool   # argmax of Gaussian diffusion on the one-hot is this process (Duo's curriculum, DCD)

    def sample_xt(self, x0: torch.Tensor, alpha: torch.Tensor, generator=None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for clean tokens x0 (B, L) at signal level alpha (B,) or (B, 1)."""

    def marginal(self, p_x0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """q(x_t) for a distribution over x_0, (..., S)."""

    def posterior(self, p_x0: torch.Tensor, x_t: torch.Tensor, alpha_s, alpha_t) -> torch.Tensor:
        """q(x_s | x_t, x_0 ~ p_x0), normalised, (..., S)."""

    def prior_sample(self, shape, device=None, generator=None) -> torch.Tensor:
        """x_1 from the process's limit distribution."""

    def prior_kl(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """KL(q(x_1 | x_0) || prior) per token."""

    def nelbo_prior(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """The prior term a reported NELBO carries per token (prior_kl, or 0 where the papers omit it)."""

    def sample_step(self, log_p: torch.Tensor, x_t: torch.Tensor, alpha_s, alpha_t, *, kappa: float = 1.0, draw,
                    generator=None) -> torch.Tensor:
        """x_s for every token: kappa * posterior + (1 - kappa) * predictor-corrector, as a per-token
        mixture; log_p (B, L, S) is the denoiser's log p(x_0 | x_t); draw(rows, generator, exclude=)."""

    def greedy(self, log_p: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The greedy last step: the most likely token where x_t is still noise."""


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x_t: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
        """log p(x_0 | x_t), (B, L, S), for x_t (B, L) long and alpha_t (B,); SEDD's analytic sampler
        takes the log concrete score in its place."""
