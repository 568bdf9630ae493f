"""Group-relative policy optimisation (GRPO, DeepSeekMath; diffu-GRPO in d1): its advantages and loss.

For each prompt, a group of G completions is sampled and scored; a completion's advantage is its
reward less the group's mean, divided by the group's standard deviation (`scale="std"`, GRPO's) or
not (`"none"`, Dr. GRPO's). The loss per completion is the PPO clipped surrogate on the ratio
r = exp(log pi(y) - log pi_old(y)) of sequence log-probabilities (duolm.rl.logprob),
    -min(r A, clip(r, 1 - eps, 1 + eps) A)  +  beta * KL,
with the KL to a reference policy by Schulman's k3 estimator, exp(ref - new) - (ref - new) - 1 (>= 0,
unbiased for KL(pi || ref) when y ~ pi).
"""
from __future__ import annotations

import torch

from duolm.errors import SettingError

SCALES = ("std", "none")


def group_advantages(rewards: torch.Tensor, scale: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """(P, G) rewards -> (P, G) advantages: centred within each group (a row), scaled by its std."""
    if scale not in SCALES:
        raise SettingError(f"`group_advantages.scale` must be one of {list(SCALES)}, got {scale!r}")
    rewards = rewards.double()
    centred = rewards - rewards.mean(-1, keepdim=True)
    if scale == "none":
        return centred
    return centred / (rewards.std(-1, keepdim=True, unbiased=False) + eps)


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(pi || ref) from log-probabilities of samples of pi."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, *, clip: float = 0.2,
              logp_ref: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """The mean over completions of the clipped surrogate (plus beta * k3 KL to the reference): a scalar
    to minimise; all inputs (N,), logp carrying the gradient."""
    if not 0 < clip < 1:
        raise SettingError(f"`grpo_loss.clip` must lie in (0, 1), got {clip!r}")
    ratio = torch.exp(logp - logp_old.detach())
    adv = advantages.to(ratio.dtype)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    loss = -surrogate
    if beta:
        if logp_ref is None:
            raise SettingError("`grpo_loss.beta` > 0 needs the reference policy's log-probabilities")
        loss = loss + beta * k3_kl(logp, logp_ref.detach())
    return loss.mean()


__all__ = ["SCALES", "group_advantages", "grpo_loss", "k3_kl"]
