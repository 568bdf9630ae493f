"""Ancestral sampling of a masked model whose denoiser ignores t, by first-hitting times.

On a grid t_0 = 1 > t_1 > ... > t_n, ancestral sampling unmasks each mask at step i with
probability (a_{i+1} - a_i) / (1 - a_i), whatever the model says; so a mask still hidden after
step i has survived with probability S_i = (1 - a_{i+1}) / (1 - a_0), and its unmasking step can
be drawn up front: the first i with S_i <= V, V ~ U(0, 1). What it unmasks to is drawn at that
step from p(x_0 | x) for the tokens visible then; when the denoiser ignores t, p changes only
when x does, so the network runs once per step at which some token unmasks (at most
min(n, L) times) and the steps in between cost nothing. The samples have exactly the
distribution of the step-by-step sampler (tests/test_samplers.py's oracle suite runs both).
"""
from __future__ import annotations

import torch

from duolm.core.randomness import at, rand
from duolm.io.progress import progress_bar
from duolm.sampling.categorical import categorical_draw, nucleus_log
from duolm.sampling.observers import NOTHING, Observer


@torch.no_grad()
def first_hitting_sample(denoiser, process, schedule, shape, *, grid: torch.Tensor, noise_removal: str = "greedy",
                         p_nucleus: float = 1.0, fixed: tuple | None = None, generator=None, device=None,
                         dtype=torch.float64, disable_progress: bool = True, x_init: torch.Tensor | None = None,
                         observer: Observer = NOTHING):
    """psi_sample's ancestral run (kappa = 1) with cache=True for an absorbing process."""
    n = len(grid) - 1
    B = shape[0]
    draw = categorical_draw(dtype)
    x = x_init.to(device) if x_init is not None else process.prior_sample(shape, device=device, generator=generator)
    if fixed is not None:
        fmask, fvals = fixed[0].to(device), fixed[1].to(device)
        x = torch.where(fmask, fvals, x)
    mask_id = process.mask_id
    alphas = schedule(grid.to(torch.float64)).alpha.to(torch.float64)
    alphas = torch.where(grid == 0, torch.ones_like(alphas), alphas).to(device)
    survival = (1 - alphas[1:]) / (1 - alphas[0])  # (n,): still masked after step i
    v = rand(x.shape, generator, device=device, dtype=torch.float64)
    # the first step whose survival falls to V or below (n: never, when the grid stops at eps)
    hit = torch.searchsorted(-survival.contiguous(), -v.reshape(-1), right=False).reshape(x.shape)
    hit = torch.where(x == mask_id, hit, torch.full_like(hit, n))
    events = torch.unique(hit[hit < n]).tolist()
    recorded = 0  # steps the observer has seen
    observer.step(0, x)
    for i in progress_bar(events, disable=disable_progress, desc="sampling"):
        for j in range(recorded, i):  # the steps in between changed nothing
            observer.step(j + 1, x)
        log_p = nucleus_log(denoiser(x, alphas[i].reshape(1).expand(B)), p_nucleus, dtype)
        if i == n - 1 and noise_removal == "greedy":  # every mask left hits the last step
            x = process.greedy(log_p, x)
        else:
            now = hit == i
            x = x.clone()
            x[now] = draw(log_p[now], at(generator, now), exclude=mask_id)
        if fixed is not None:
            x = torch.where(fmask, fvals, x)
        observer.step(i + 1, x)
        recorded = i + 1
    for j in range(recorded, n):
        observer.step(j + 1, x)
    observer.report(denoiser_calls=len(events), cached_calls=n - len(events))
    return x
