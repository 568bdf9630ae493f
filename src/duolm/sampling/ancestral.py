"""Ancestral sampling for absorbing and uniform-state models, with the papers' last-step options."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from duolm.sampling.grids import linear_grid

NOISE_REMOVAL = ("ancestral", "greedy", "none")


def sample_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """Draw one index per row of probs (..., S) via the Gumbel-max trick on log-probabilities."""
    u = torch.rand(probs.shape, dtype=probs.dtype, device=probs.device, generator=generator)
    tiny = torch.finfo(probs.dtype).tiny
    gumbel = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))
    return (probs.clamp_min(0).log() + gumbel).argmax(-1)


def denoiser_from(method, backbone, use_float64: bool = True):
    """The sampling contract for one method and backbone: (x_t, alpha_t) -> log p(x_0 | x_t)."""

    @torch.no_grad()
    def denoiser(x_t, alpha_t):
        out = method.denoise(backbone, x_t, alpha_t.reshape(-1, 1).float())
        return out.double() if use_float64 else out.float()

    return denoiser


@torch.no_grad()
def ancestral_sample(denoiser, process, schedule, shape, *, steps: int, noise_removal: str = "greedy",
                     eps: float = 1e-3, generator=None, device=None, disable_progress: bool = True,
                     dtype=torch.float64):
    """Ancestral sampling: x_s ~ q(x_s | x_t, x_0 = p(x_0 | x_t)) along a linear time grid.

    steps denoiser calls in all; the last one goes to t = 0 by `noise_removal`:
    'ancestral' samples q(x_0 | x_t, p), 'greedy' takes the argmax of p(x_0 | x_t)
    (the greedy-tail sampler), 'none' stops at t = eps with one more ancestral step.
    """
    if noise_removal not in NOISE_REMOVAL:
        raise ValueError(f"sampling.noise_removal must be one of {list(NOISE_REMOVAL)}, got {noise_removal!r}")
    grid = linear_grid(steps, eps, final_zero=noise_removal != "none")
    B = shape[0]
    x = process.prior_sample(shape, device=device) if process.kind == "absorbing" else \
        process.prior_sample(shape, device=device, generator=generator)
    for i in tqdm(range(steps), disable=disable_progress, desc="sampling"):
        t, s = grid[i], grid[i + 1]
        alpha_t = schedule(t.reshape(1)).alpha.expand(B).to(device)
        log_p = denoiser(x, alpha_t).to(dtype)
        p = log_p.exp()
        last = i == steps - 1
        if last and noise_removal == "greedy":
            x_new = p.argmax(-1)
            if process.kind == "absorbing":
                x_new = torch.where(x == process.mask_id, x_new, x)
            return x_new
        alpha_s = torch.ones_like(alpha_t) if s == 0 else schedule(s.reshape(1)).alpha.expand(B).to(device)
        post = process.posterior(p, x, alpha_s.to(dtype), alpha_t.to(dtype))
        x = sample_categorical(post, generator)
    return x
