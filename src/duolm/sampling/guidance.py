"""Classifier-free guidance as a denoiser wrapper (k-diffusion style: the sampler never knows)."""
from __future__ import annotations

import torch

from duolm.errors import SettingError


def check_guidance(method, guidance) -> None:
    """Guidance mixes x_0 predictions: a method whose recipe does not support it (a score model, sedd)
    samples with guidance 1 (None) only."""
    if guidance not in (None, 1, 1.0) and not method.supports.guidance:
        raise SettingError("`GenerationRequest.guidance` mixes x_0 predictions; a score model (sedd) gives none, so "
                           "it samples with guidance 1 (the conditional model) only")


def guided_denoiser(conditional, unconditional, weight: float):
    """log p_w(x_0 | x_t) = normalise(w log p(x_0 | x_t, c) + (1 - w) log p(x_0 | x_t)).

    weight 1 is the conditional model, 0 the unconditional one, > 1 sharpens toward the
    class. Any real weight works (the papers' code crashes for weights other than 0 or 1).
    States that either model rules out stay ruled out.
    """
    if weight == 1.0:
        return conditional
    if weight == 0.0:
        return unconditional

    def denoiser(x_t, alpha_t):
        lc, lu = conditional(x_t, alpha_t), unconditional(x_t, alpha_t)
        floor = torch.finfo(lc.dtype).min / 4
        impossible = (lc <= -1e5) | (lu <= -1e5)
        mixed = weight * lc.clamp_min(-1e5) + (1.0 - weight) * lu.clamp_min(-1e5)
        mixed = torch.where(impossible, torch.full_like(mixed, floor), mixed)
        return mixed.log_softmax(-1)

    return denoiser
