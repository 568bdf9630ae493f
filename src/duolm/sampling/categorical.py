"""Categorical draws for samplers: exact in float64, over only the rows that need one.

``draw_categorical`` is inverse-CDF sampling: one float64 uniform per row against the
float64 running sum of the row's probabilities, so every state keeps its own share of the
unit interval down to 2^-53. ``race_categorical`` is the exponential race (the Gumbel-max
trick) that the papers' code runs over the whole (B, L, K) posterior; in float32 its noise
has 2^-24 resolution, so states much less likely than the leader are never drawn. That lowers
the samples' entropy (Zheng et al., 2024, "Masked diffusion models are secretly time-agnostic
masked models and exploit inaccurate categorical sampling"; tests/test_categorical.py shows it).
"""
from __future__ import annotations

import torch

from duolm.core.randomness import rand
from duolm.errors import SettingError


def draw_categorical(log_p: torch.Tensor, generator=None, *, exclude: int | None = None) -> torch.Tensor:
    """One index per row of log_p (m, K) (log-probabilities, normalised or not): (m,) long, in float64.

    exclude: a state never drawn (the mask of an absorbing process; its mass is dropped and
    the rest renormalised).
    """
    m, K = log_p.shape
    if m == 0:
        return torch.zeros(0, dtype=torch.long, device=log_p.device)
    dtype = torch.float64
    z = log_p.to(dtype)
    p = (z - z.max(-1, keepdim=True).values).exp_()
    if exclude is not None:
        p[:, exclude] = 0.0
    cdf = p.cumsum_(-1)
    total = cdf[:, -1:]
    u = rand((m, 1), generator, dtype=dtype, device=log_p.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total even after rounding
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_max(K - 1)


def race_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """Draw one index per row of probs (..., S) (unnormalised): argmax(p / E) with E ~ Exp(1).

    Exact up to the precision of probs' dtype; in float32 it is the papers' inaccurate draw.
    """
    u = rand(probs.shape, generator, dtype=probs.dtype, device=probs.device)
    e = (-torch.log1p(-u)).clamp_min(torch.finfo(probs.dtype).tiny)  # Exp(1), never 0 (0/0 would be NaN)
    return (probs.clamp_min(0) / e).argmax(-1)


def categorical_draw(dtype: torch.dtype):
    """The row draw a sampler uses at a precision: float64 inverse CDF (default) or a float32 race."""
    if dtype == torch.float64:
        return draw_categorical

    def draw(log_p, generator=None, *, exclude=None):
        p = log_p.float().exp()
        if exclude is not None:
            p[:, exclude] = 0.0
        return race_categorical(p, generator)

    return draw


def check_top_p(top_p: float) -> None:
    if not 0.0 < top_p <= 1.0:
        raise SettingError(f"`SamplerSpec.p_nucleus` must lie in (0, 1], got {top_p}")


def nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of states whose mass reaches top_p (per row), renormalised."""
    if top_p >= 1.0:
        return p
    check_top_p(top_p)
    srt, idx = p.sort(-1, descending=True)
    before = srt.cumsum(-1) - srt  # mass strictly above each state
    keep = (before < top_p).to(p.dtype)
    kept = torch.zeros_like(p).scatter(-1, idx, srt * keep)
    return kept / kept.sum(-1, keepdim=True)


def nucleus_log(log_p: torch.Tensor, top_p: float, dtype=torch.float64) -> torch.Tensor:
    """log of nucleus(p) (p itself, untouched, when top_p = 1)."""
    if top_p >= 1.0:
        return log_p
    return nucleus(log_p.to(dtype).exp(), top_p).log()
