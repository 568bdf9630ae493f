"""Ancestral sampling for absorbing and uniform-state models, with the papers' last-step options."""
from __future__ import annotations

import torch

from duolm.sampling.grids import linear_grid
from duolm.sampling.psi import psi_sample
from duolm.sampling.spec import SamplerSpec


def denoiser_from(method, backbone):
    """The sampling contract for one method and backbone: (x_t, alpha_t) -> log p(x_0 | x_t).

    In the network's precision (float32): samplers draw in float64 from the rows they need,
    rather than copying all (B, L, K) to float64 at every step.
    """

    @torch.no_grad()
    def denoiser(x_t, alpha_t):
        return method.denoise(backbone, x_t, alpha_t.reshape(-1, 1).float())

    return denoiser


@torch.no_grad()
def ancestral_sample(denoiser, process, schedule, shape, *, steps: int, noise_removal: str = "greedy",
                     eps: float = 1e-3, **kwargs):
    """Ancestral sampling: x_s ~ q(x_s | x_t, x_0 = p(x_0 | x_t)) along a linear time grid.

    `steps` updates from t = 1 to eps, then one more call goes to t = 0 by `noise_removal`
    (the papers' count): 'ancestral' samples q(x_0 | x_eps, p), 'greedy' takes the argmax
    of p(x_0 | x_eps) (the greedy tail); 'none' stops at t = eps.
    Other keywords (p_nucleus, fixed, cache, generator, device, stats, ...) go to psi_sample.
    """
    grid = linear_grid(steps, eps, final_zero=noise_removal != "none")
    return psi_sample(denoiser, process, schedule, shape, grid=grid, kappas=None, noise_removal=noise_removal,
                      **kwargs)


def from_spec(model, spec: SamplerSpec, shape, *, bos_id: int | None = None, **common):
    """The registry's adapter (ancestral, and ancestral_cache: MDLM's reuse of the denoiser output)."""
    return ancestral_sample(model.denoiser, model.process, model.schedule, shape,
                            steps=spec.steps, noise_removal=spec.noise_removal, eps=spec.eps,
                            cache=spec.predictor == "ancestral_cache", p_nucleus=spec.p_nucleus,
                            dtype=spec.dtype, **common)
