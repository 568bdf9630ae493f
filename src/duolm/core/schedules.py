"""Noise schedules: the signal level alpha(t) of a discrete diffusion, t in [0, 1].

alpha(0) = 1 (clean data) and alpha decreases to about eps at t = 1. Every
schedule returns alpha_t and its time derivative and can invert alpha -> t;
processes and losses only ever see these three things.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from duolm.errors import SettingError


@dataclass(frozen=True)
class ScheduleOutput:
    alpha: torch.Tensor   # signal level, same shape as t
    dalpha: torch.Tensor  # d alpha / dt (negative)


class LogLinear:
    """alpha(t) = 1 - (1 - eps) t, so that sigma = -log(alpha) is log-linear in 1 - t."""

    name = "log-linear"

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise SettingError(f"`Schedule.eps` must lie in [0, 1), got {eps}")
        self.eps = eps

    def __call__(self, t: torch.Tensor) -> ScheduleOutput:
        alpha = 1.0 - (1.0 - self.eps) * t
        return ScheduleOutput(alpha=alpha, dalpha=torch.full_like(alpha, -(1.0 - self.eps)))

    def inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        return (1.0 - alpha) / (1.0 - self.eps)


class Cosine:
    """alpha(t) = 1 - cos(pi/2 * (1 - (1 - eps) t)).

    The papers' code drops the (1 - eps) chain-rule factor from the derivative
    and ignores eps in the inverse; both are right here (tests/test_schedules.py).
    """

    name = "cosine"

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise SettingError(f"`Schedule.eps` must lie in [0, 1), got {eps}")
        self.eps = eps

    def __call__(self, t: torch.Tensor) -> ScheduleOutput:
        u = 1.0 - (1.0 - self.eps) * t
        alpha = 1.0 - torch.cos(0.5 * math.pi * u)
        dalpha = -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * u)
        return ScheduleOutput(alpha=alpha, dalpha=dalpha)

    def inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        u = torch.acos(1.0 - alpha) * (2.0 / math.pi)
        return (1.0 - u) / (1.0 - self.eps)


SCHEDULES = {"log-linear": LogLinear, "cosine": Cosine}


def make_schedule(name: str, eps: float = 1e-3):
    if name not in SCHEDULES:
        raise SettingError(f"`make_schedule.name` must be one of {sorted(SCHEDULES)}, got {name!r}")
    return SCHEDULES[name](eps=eps)
