"""SEDD's analytic (Tweedie tau-leaping) sampler for score-parameterised absorbing models."""
from __future__ import annotations

import torch

from duolm.errors import SettingError
from duolm.io.progress import progress_bar
from duolm.sampling.categorical import race_categorical
from duolm.sampling.grids import linear_grid
from duolm.sampling.observers import NOTHING, Observer
from duolm.sampling.spec import SamplerSpec


def _step_probs(score: torch.Tensor, x: torch.Tensor, dsigma: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Unnormalised p(x_s | x_t) from the concrete score at x_t, for a noise decrement dsigma (B,).

    Tweedie for the absorbing process: exp(dsigma) scales the score of every token and
    the mask keeps the remaining mass; a visible token stays, a mask unmasks to y with
    weight (1 - e^-dsigma) * staggered score(y).
    """
    d = dsigma.reshape(-1, *([1] * (score.ndim - 1))).to(score.dtype)
    stag = score * d.exp()
    stag[..., mask_id] += ((1 - d.exp()) * score.sum(-1, keepdim=True))[..., 0]
    masked = (x == mask_id)[..., None]
    edge = torch.where(masked, (1 - torch.exp(-d)).expand_as(stag), torch.zeros_like(stag))
    edge[..., mask_id] = torch.where(masked[..., 0], torch.ones_like(edge[..., 0]), edge[..., mask_id])
    edge = edge + torch.where(masked, torch.zeros_like(stag),
                              torch.nn.functional.one_hot(x, stag.shape[-1]).to(stag.dtype))
    return stag * edge


@torch.no_grad()
def analytic_sample(score_fn, process, schedule, shape, *, steps: int, noise_removal: str = "ancestral",
                    eps: float = 1e-3, generator=None, device=None, dtype=torch.float64,
                    disable_progress: bool = True):
    """SEDD's sampler: `steps` Tweedie steps from t = 1 to eps, then a denoising step to t = 0.

    score_fn(x_t, alpha_t) -> log concrete score (B, L, S). noise_removal 'ancestral'
    adds the final denoising step (one more score call); 'none' stops at eps. The
    greedy tail needs x_0 probabilities, which a score model does not give.
    """
    if process.mask_id is None:
        raise ValueError("the analytic sampler is for absorbing (SEDD) score models")
    if noise_removal not in ("ancestral", "none"):
        raise SettingError(f"`SamplerSpec.noise_removal`={noise_removal} is not available for the analytic sampler "
                         f"(a score model has no x_0 argmax); use ancestral or none")
    grid = linear_grid(steps, eps, final_zero=False)
    B = shape[0]
    x = process.prior_sample(shape, device=device, generator=generator)
    m = process.mask_id

    def sigma_at(t):
        return -torch.log(schedule(t.reshape(1)).alpha).expand(B).to(device)

    for i in progress_bar(range(steps), disable=disable_progress, desc="sampling"):
        t, s = grid[i], grid[i + 1]
        alpha_t = schedule(t.reshape(1)).alpha.expand(B).to(device)
        score = score_fn(x, alpha_t).to(dtype).exp()
        x = race_categorical(_step_probs(score, x, sigma_at(t) - sigma_at(s), m), generator)
    if noise_removal == "ancestral":
        t = grid[-1]
        alpha_t = schedule(t.reshape(1)).alpha.expand(B).to(device)
        score = score_fn(x, alpha_t).to(dtype).exp()
        probs = _step_probs(score, x, sigma_at(t), m)
        probs[..., m] = 0.0
        x = race_categorical(probs, generator)
    return x


def from_spec(model, spec: SamplerSpec, shape, *, bos_id: int | None = None, fixed=None, generator=None,
              device=None, disable_progress: bool = True, observer: Observer = NOTHING):
    """The registry's adapter; held positions are not supported by Tweedie tau-leaping here."""
    if fixed is not None:
        raise SettingError("`SamplerSpec.predictor`=analytic cannot hold positions (`SamplerSpec.prefix`, total_length)")
    return analytic_sample(model.denoiser, model.process, model.schedule, shape,
                           steps=spec.steps, noise_removal=spec.noise_removal, eps=spec.eps, generator=generator,
                           device=device, dtype=spec.dtype,
                           disable_progress=disable_progress)
