"""Reinforcement learning with verifiable rewards for every duolm method: the math.

- duolm.rl.logprob: a completion's log-probability given its prompt: exact for AR, the ELBO for
  every method with a NELBO (uniform-state, blocks and DiffusionGemma included), diffu-GRPO's
  one-pass estimate for masked methods;
- duolm.rl.grpo: group-relative advantages and the clipped surrogate with a KL penalty;
- duolm.rl.groups: G completions per prompt with any sampler, every prompt in one batch, with prompt
  and completion masks;
- duolm.rl.update: one GRPO update (old / reference log-probabilities on the same draws, then
  `iterations` gradient steps).
The `duolm rl` command composes them on Lightning (duolm.training.grpo_module, duolm.app.jobs.rl).
"""
