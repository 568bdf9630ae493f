"""One sampler step as a per-token mixture: every reverse step of both processes is a choice, per token,
between staying at x_t, a draw from the model's x_0 distribution, and the process's noise (a uniform
token, or the mask).

Drawing the component first means the (B, L, K) posterior is never formed: only the tokens that
chose a draw read their K probabilities (about once per token over a whole run of a uniform-state
sampler; once per unmasked token of a masked one). The mixture is exact, so the step has the
distribution of the full posterior (tests/test_samplers.py's oracle suite).
"""
from __future__ import annotations

import torch

from duolm.core.randomness import at, rand

STAY, DRAW, NOISE = 0, 1, 2


def expand_level(alpha: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha (B,) or (B, 1) as float64 (B, 1) against tokens like (B, L)."""
    return torch.as_tensor(alpha, device=like.device).to(torch.float64).reshape(-1, 1)


def posterior_or_pc(kappa: float, x_t: torch.Tensor, generator=None) -> torch.Tensor | None:
    """Which tokens take the posterior (True) and which the predictor-corrector step; None: all posterior."""
    if kappa >= 1.0:
        return None
    return rand(x_t.shape, generator, device=x_t.device, dtype=torch.float64) < kappa


def resolve(x_t: torch.Tensor, component: torch.Tensor, log_p: torch.Tensor, draw, noise, generator=None, *,
            exclude: int | None = None) -> torch.Tensor:
    """x_s from each token's component: x_t, a draw from exp(log_p) (only those rows), or noise(n,
    generator) ids (row streams narrowed to those tokens: duolm.core.randomness.at)."""
    x_s = x_t.clone()
    drawn = component == DRAW
    if drawn.any():
        x_s[drawn] = draw(log_p[drawn], at(generator, drawn), exclude=exclude)
    noisy = component == NOISE
    n = int(noisy.sum())
    if n:
        x_s[noisy] = noise(n, at(generator, noisy))
    return x_s
