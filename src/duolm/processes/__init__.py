"""Forward processes of discrete diffusion: absorbing (masked) and uniform-state.

Both share one contract, which the losses and samplers are written against:

- ``num_states``: the size of the state space (the mask state included).
- ``sample_xt(x0, alpha, generator)``: draw x_t ~ q(x_t | x_0).
- ``marginal(p_x0, alpha)``: q(x_t) for a distribution over x_0, (..., S).
- ``posterior(p_x0, x_t, alpha_s, alpha_t)``: q(x_s | x_t, x_0) for a one-hot
  or predicted x_0, i.e. the normalised sum over x_0 of q(x_s, x_t | x_0) p(x_0).
- ``prior_sample(shape)`` and ``prior_kl(x0, alpha_1)``.
"""
from duolm.processes.absorbing import AbsorbingProcess
from duolm.processes.uniform import UniformProcess

__all__ = ["AbsorbingProcess", "UniformProcess"]
