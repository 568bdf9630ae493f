"""Time grids for samplers: tensors of times from 1 down to 0 (float64)."""
from __future__ import annotations

import torch

from duolm.errors import SettingError


def linear_grid(steps: int, eps: float = 1e-3, final_zero: bool = True) -> torch.Tensor:
    """steps + 1 times from 1 down to eps, evenly spaced; with final_zero, then 0.

    As in the papers, `steps` updates take the sample from t = 1 to t = eps, and the
    noise-removal call (greedy argmax or an ancestral step) goes from eps to 0: steps + 1
    network evaluations. (Counting that call inside `steps` would make the last update a
    jump from t = 1/steps straight to 0; with a greedy tail and few steps that jump
    collapses the samples onto the most likely tokens.)
    """
    if steps < 1:
        raise SettingError(f"`SamplerSpec.steps` must be >= 1, got {steps}")
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)]) if final_zero else t


def linear_constant_linear_grid(steps: int, plateau: float, *, high_frac: float = 0.2, middle_frac: float = 0.6,
                                eps: float = 1e-3, final_zero: bool = True, schedule=None,
                                plateau_in: str = "t") -> torch.Tensor:
    """Linear from 1 to the plateau, `middle_frac` of the steps at the plateau, linear to eps.

    plateau_in='alpha' gives the plateau as a signal level, converted with the
    schedule's inverse. Counts are rounded half up and the last part always has
    at least one step, so the grid always ends at eps (the papers' code rounds
    half to even and can stop at the plateau instead).
    """
    if steps < 1:
        raise SettingError(f"`SamplerSpec.steps` must be >= 1, got {steps}")
    if plateau_in not in ("t", "alpha"):
        raise SettingError(f"`PsiOptions.plateau_in` must be 't' or 'alpha', got {plateau_in!r}")
    c = float(plateau)
    if plateau_in == "alpha":
        if schedule is None:
            raise ValueError("a plateau given in alpha needs the noise schedule")
        c = float(schedule.inverse(torch.tensor(c, dtype=torch.float64)))
    if not eps < c < 1.0:
        raise SettingError(f"`PsiOptions.plateau` must lie inside the grid, t in ({eps}, 1); got t = {c:.4g}")
    n = steps + 1  # points
    n_hi = max(1, int(high_frac * n + 0.5))
    n_mid = int(middle_frac * n + 0.5)
    n_mid = max(0, min(n_mid, n - n_hi - 1))
    n_lo = n - n_hi - n_mid
    t = torch.cat([torch.linspace(1.0, c, n_hi, dtype=torch.float64) if n_hi > 1 else torch.ones(1, dtype=torch.float64),
                   torch.full((n_mid,), c, dtype=torch.float64),
                   torch.linspace(c, eps, n_lo, dtype=torch.float64) if n_lo > 1 else torch.full((1,), eps,
                                                                                                  dtype=torch.float64)])
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)]) if final_zero else t
