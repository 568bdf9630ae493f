"""One GRPO update of a policy from scored groups: advantages, old / reference log-probabilities,
then `iterations` gradient steps on the clipped surrogate (plus the KL penalty).

The ELBO estimator is a Monte Carlo estimate; the policy's, the old policy's and the reference's
log-probabilities of a completion are estimated with the same draws of (t, x_t) (common random
numbers, as VRPO does), so their differences, the ratio and the KL, are not swamped by the draws'
noise: the generator's state is set back before each of them. For the same reason dropout is off
during the update (the network in eval mode; gradients still flow).
"""
from __future__ import annotations

import torch

from duolm.rl.grpo import group_advantages, grpo_loss, k3_kl
from duolm.rl.logprob import sequence_logprob


def _same_draws(generator):
    state = generator.get_state() if generator is not None else None

    def reset():
        if generator is not None:
            generator.set_state(state)
    return reset


def grpo_update(method, policy, optimizer, groups, rewards: torch.Tensor, *, reference=None, estimator: str = "elbo",
                samples: int = 1, iterations: int = 1, clip: float = 0.2, beta: float = 0.0, scale: str = "std",
                generator=None, optimizer_step=None) -> dict:
    """Update `policy` in place; rewards (P, G). Returns the step's metrics: reward, loss, kl (to the
    reference, when beta > 0), completion_length, clipped (the share of ratios outside the clip range at
    the last iteration). optimizer_step(loss): one gradient step on the loss (default: zero the
    gradients, backward, optimizer.step(); a trainer passes its own, with its backward and clipping)."""
    if optimizer_step is None:
        def optimizer_step(loss):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    adv = group_advantages(rewards, scale).reshape(-1).to(groups.sequences.device)
    args = (groups.sequences, groups.prompt, groups.completion)
    kw = {"estimator": estimator, "samples": samples, "generator": generator}
    reset = _same_draws(generator)
    was_training = policy.training
    policy.eval()  # dropout off: the ratio compares the policy with itself, not two dropout masks
    with torch.no_grad():
        reset()
        old = sequence_logprob(method, policy, *args, **kw)
        ref = None
        if beta:
            reset()
            ref = sequence_logprob(method, reference, *args, **kw)
    metrics = {}
    for _ in range(iterations):
        reset()
        new = sequence_logprob(method, policy, *args, **kw)
        loss = grpo_loss(new, old, adv, clip=clip, logp_ref=ref, beta=beta)
        optimizer_step(loss)
        ratio = torch.exp(new.detach() - old)
        metrics = {"loss": float(loss.detach()), "clipped": float(((ratio < 1 - clip) | (ratio > 1 + clip))
                                                                 .double().mean())}
        if beta:
            metrics["kl"] = float(k3_kl(new.detach(), ref).mean())
    policy.train(was_training)
    metrics["reward"] = float(rewards.double().mean())
    metrics["completion_length"] = float(groups.completion.sum(-1).double().mean())
    return metrics


__all__ = ["grpo_update"]
