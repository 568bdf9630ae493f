"""Time grids for samplers: tensors of times from 1 down to 0."""
from __future__ import annotations

import torch


def linear_grid(steps: int, eps: float = 1e-3, final_zero: bool = True) -> torch.Tensor:
    """steps + 1 times from 1 down to eps, evenly spaced; the last is 0 when final_zero.

    With final_zero, the last of the `steps` denoiser calls is the noise-removal
    step to t = 0, so `steps` is exactly the number of network evaluations.
    """
    if steps < 1:
        raise ValueError(f"sampling.steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64) if steps > 1 else torch.tensor([1.0, eps],
                                                                                                  dtype=torch.float64)
    if final_zero:
        t[-1] = 0.0
    return t
