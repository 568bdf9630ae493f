"""Turn a network's raw logits into the quantity a method's loss and samplers use.

- ``subs`` (MDLM): log p(x_0 | x_t) with zero mass on the mask and unmasked tokens copied.
- ``mean`` (Duo, D3PM): log p(x_0 | x_t), a plain softmax over the data tokens.
- ``log_score`` (SEDD): log of the concrete score p_t(y) / p_t(x_t), absorbing process.

They take the network's fresh logits; without autograd (sampling, evaluation) subs and mean
overwrite them in place rather than copy (B, L, K) tensors.
"""
from __future__ import annotations

import math

import torch

NEG_INF = -1e6  # finite, so that 0 * NEG_INF stays 0 in gradients


def subs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    if not (torch.is_grad_enabled() and logits.requires_grad):
        return _subs_in_place(logits, x_t, mask_id)
    logits = logits.clone()
    logits[..., mask_id] = NEG_INF
    log_p = logits.log_softmax(-1)
    carry = torch.full_like(log_p, NEG_INF).scatter(-1, x_t[..., None], 0.0)
    return torch.where((x_t == mask_id)[..., None], log_p, carry)


def _subs_in_place(logits, x_t, mask_id):
    """subs without autograd (sampling, evaluation): the fresh logits are overwritten, so no
    (B, L, K) copy is made; four passes over them instead of nine."""
    logits = mean(logits, mask_id)  # normalised in place, the mask excluded
    visible = (x_t != mask_id)[..., None]
    logits.masked_fill_(visible, NEG_INF)
    return logits.scatter_(-1, x_t[..., None], torch.where(visible, 0.0, NEG_INF).to(logits.dtype))


def mean(logits: torch.Tensor, mask_id: int | None = None) -> torch.Tensor:
    if not (torch.is_grad_enabled() and logits.requires_grad):  # no autograd: normalise in place
        if mask_id is not None:
            logits[..., mask_id] = NEG_INF
        return logits.sub_(logits.logsumexp(-1, keepdim=True))
    if mask_id is not None:
        logits = logits.clone()
        logits[..., mask_id] = NEG_INF
    return logits.log_softmax(-1)


def log_score(logits: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """SEDD's scaled parameterisation: subtract log(e^sigma - 1) and log(K - 1), and fix s(x_t) = 1.

    The offset makes an all-zero network output the score of a uniform x_0,
    which is what lets SEDD train stably from initialisation.
    """
    K = logits.shape[-1]
    sigma = sigma.to(logits.dtype).reshape(-1, *([1] * (logits.ndim - 1)))
    log_expm1 = torch.where(sigma < 0.5, torch.expm1(sigma), sigma.exp() - 1.0).log()
    out = logits - log_expm1 - math.log(K - 1)
    return out.scatter(-1, x_t[..., None], 0.0)
