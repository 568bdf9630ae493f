"""A completion's log-probability given its prompt, as a policy gradient needs it, for every method.

sequences (B, L): [prompt | completion | padding]; prompt (B, L) bool marks the prompt (held clean),
completion (B, L) bool the tokens whose log-probability is wanted. Three estimators:

- ``exact``: AR's next-token log-probabilities summed over the completion: the log-probability.
- ``elbo``: minus the method's NELBO of the completion with the prompt held clean, averaged over
  `samples` draws of (t, x_t): a lower bound on log p(completion | prompt) for every method with a
  NELBO (masked, uniform-state, blocks, DiffusionGemma's canvases), its variance falling as 1 /
  samples. This is the ELBO-as-log-likelihood of LLaDA 1.5's VRPO (and SPG's lower bound, without
  SPG's upper bound): chosen because it is the one estimator defined for uniform-state models,
  whose tokens are never "masked", and because duolm's NELBO is tested exact against brute force.
  The padding after the completion is noised like any position but not scored.
- ``diffu_grpo``: d1's one-pass estimate for masked models: every completion token masked, each
  prompt token masked with probability `prompt_mask` (d1's 0.15; 0 keeps the prompt whole), one
  network call, the per-token log p(x_0^i | x_t) summed over the completion. Not a bound: a
  mean-field estimate (tests measure its bias against enumeration).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from duolm.errors import SettingError

ESTIMATORS = ("exact", "elbo", "diffu_grpo")


def check_estimator(method, estimator: str) -> None:
    """Which estimator fits which method, in one sentence when not."""
    if estimator not in ESTIMATORS:
        raise SettingError(f"`sequence_logprob.estimator` must be one of {list(ESTIMATORS)}, got {estimator!r}")
    if estimator == "exact" and not method.exact_likelihood:
        raise SettingError(f"`sequence_logprob.estimator`=exact needs an exact likelihood (`Method.name`=ar); "
                           f"{method.name} has its ELBO: use elbo")
    if estimator != "exact" and method.exact_likelihood:
        raise SettingError(f"`Method.name`={method.name} has an exact likelihood: use `sequence_logprob.estimator`=exact")
    if estimator == "diffu_grpo" and (method.process is None or method.process.mask_id is None):
        raise SettingError(f"`sequence_logprob.estimator`=diffu_grpo masks the completion, which needs a masked method "
                           f"(mdlm), not `Method.name`={method.name}; use elbo")
    if estimator == "diffu_grpo" and method.block_size is not None:
        raise SettingError(f"`sequence_logprob.estimator`=diffu_grpo is one pass of a whole-sequence masked model; a "
                           f"block model (`Method.block_size`={method.block_size}) scores its completions by elbo")


def sequence_logprob(method, backbone, sequences: torch.Tensor, prompt: torch.Tensor, completion: torch.Tensor, *,
                     estimator: str = "elbo", samples: int = 1, prompt_mask: float = 0.15,
                     generator=None) -> torch.Tensor:
    """log p(completion | prompt) per sequence, (B,) float64, by `estimator` (module docstring);
    differentiable in the backbone's parameters when gradients are on."""
    check_estimator(method, estimator)
    if method.fused and torch.is_grad_enabled():  # the fused loss writes the gradient of a mean, not of these sums
        method = replace(method, fused=False)
    completion = completion.to(sequences.device)
    prompt = prompt.to(sequences.device)
    if estimator == "exact":
        terms = method.nelbo_terms(backbone, sequences, completion.float())
        # AR's terms are positions 1 .. L - 1: the loss of predicting token i from those before it
        return -(terms.nll * completion[:, 1:].to(terms.nll.dtype)).sum(-1)
    if estimator == "elbo":
        total = 0.0
        for _ in range(samples):
            nelbo, _ = method.sequence_nelbo(backbone, sequences, completion.float(), generator=generator, clean=prompt)
            total = total + nelbo
        return -total / samples
    return _diffu_grpo(method, backbone, sequences, prompt, completion, prompt_mask, generator)


def _diffu_grpo(method, backbone, x0, prompt, completion, prompt_mask: float, generator) -> torch.Tensor:
    mask_id = method.process.mask_id
    hide = completion.clone()
    if prompt_mask > 0:
        draw = torch.rand(x0.shape, generator=generator, device=x0.device if generator is None else generator.device)
        hide |= prompt & (draw.to(x0.device) < prompt_mask)
    x_t = torch.where(hide, torch.full_like(x0, mask_id), x0)
    # the noise level a time-conditioned model is told: the share of the sequence that is masked
    share = hide.float().mean(-1, keepdim=True).clamp(1e-3, 1.0).double()
    alpha = (1.0 - share).clamp_min(method.schedule(torch.ones(1, 1, dtype=torch.float64)).alpha)
    log_p = method.denoise(backbone, x_t, alpha.to(torch.float32 if method.loss_dtype == torch.float32
                                                   else torch.float64))
    token = log_p.gather(-1, x0[..., None])[..., 0].double()
    return (token * completion.double()).sum(-1)


__all__ = ["ESTIMATORS", "check_estimator", "sequence_logprob"]
