"""Kappa schedules of the Psi-samplers: how much of each step is the posterior.

A Psi step samples from kappa * q(x_s | x_t, x0_hat) + (1 - kappa) * q(x_s | x0_hat ~ q(x_0 | x_t)):
kappa = 1 is ancestral sampling, kappa = 0 a pure predictor-corrector step. The
ReMDM-style modes pick a remasking probability sigma per step and set
kappa = clip(1 - sigma / (1 - alpha_s), 0, 1):

- ``posterior``: kappa = 1;  ``pc``: kappa = 0;  ``constant``: kappa = eta.
- ``remdm-constant``: sigma = eta.
- ``max-capped``: sigma = min(eta, (1 - alpha_s) / alpha_t).
- ``max-rescale``: sigma = eta * min(1, (1 - alpha_s) / alpha_t), as in the ReMDM and
  Psi-sampler papers; the papers' code uses min(eta, .) * eta there, which shrinks
  sigma quadratically in eta (tests/test_samplers.py::test_max_rescale_uses_min_one_not_min_eta).

The reference configuration strings (``max-capped-0.01``, ``pure-posterior``, ...)
are parsed once by ``parse_kappa``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from duolm.errors import SettingError

KAPPA_MODES = ("posterior", "pc", "constant", "remdm-constant", "max-capped", "max-rescale")
_ALIASES = {"pure-posterior": "posterior", "pure-pc": "pc", "constant-remdm": "remdm-constant",
            "constant-eta": "constant", "max-capped-eta": "max-capped", "max-rescale-eta": "max-rescale"}


@dataclass(frozen=True)
class Kappa:
    mode: str = "posterior"
    eta: float = 0.0

    def __post_init__(self):
        if self.mode not in KAPPA_MODES:
            raise ValueError(f"kappa mode must be one of {list(KAPPA_MODES)}, got {self.mode!r}")
        if self.mode == "constant" and not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"kappa must lie in [0, 1], got constant eta = {self.eta}")
        if self.mode in ("remdm-constant", "max-capped", "max-rescale") and not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta of {self.mode} must lie in [0, 1], got {self.eta}")

    def __call__(self, alpha_t: torch.Tensor, alpha_s: torch.Tensor) -> torch.Tensor:
        """kappa for steps from alpha_t to alpha_s (1-D tensors of equal length, any length >= 0)."""
        alpha_t, alpha_s = alpha_t.double(), alpha_s.double()
        if self.mode == "posterior":
            return torch.ones_like(alpha_t)
        if self.mode == "pc":
            return torch.zeros_like(alpha_t)
        if self.mode == "constant":
            return torch.full_like(alpha_t, self.eta)
        cap = torch.where(alpha_t > 0, (1 - alpha_s) / alpha_t.clamp_min(1e-300), torch.ones_like(alpha_t))
        if self.mode == "remdm-constant":
            sigma = torch.full_like(alpha_t, self.eta)
        elif self.mode == "max-capped":
            sigma = torch.minimum(torch.full_like(alpha_t, self.eta), cap)
        else:  # max-rescale
            sigma = self.eta * torch.minimum(torch.ones_like(alpha_t), cap)
        kappa = 1 - sigma / (1 - alpha_s).clamp_min(1e-300)
        # at alpha_s = 1 (the last step to t = 0) nothing can be remasked: the posterior
        return torch.where(alpha_s >= 1, torch.ones_like(kappa), kappa.clamp(0.0, 1.0))


def parse_kappa(spec: str) -> Kappa:
    """'pure-posterior', 'pure-pc', 'constant-0.5', 'constant-remdm-0.01', 'max-capped-0.01', ..."""
    spec = spec.strip()
    if spec in _ALIASES and spec in ("pure-posterior", "pure-pc"):
        return Kappa(_ALIASES[spec])
    if spec in KAPPA_MODES and spec in ("posterior", "pc"):
        return Kappa(spec)
    head, _, tail = spec.rpartition("-")
    try:
        eta = float(tail)
    except ValueError:
        raise SettingError(f"`PsiOptions.kappa` mode {spec!r}: expected one of {list(KAPPA_MODES)} followed by "
                         f"'-<eta>' (e.g. max-capped-0.01), or pure-posterior / pure-pc") from None
    mode = _ALIASES.get(head, head)
    return Kappa(mode, eta)


@dataclass(frozen=True)
class KappaSchedule:
    """Piecewise kappa over the high / middle / low noise parts of the time grid."""

    high: Kappa = Kappa()
    middle: Kappa = Kappa()
    low: Kappa = Kappa()
    high_frac: float = 0.2
    middle_frac: float = 0.6

    def __post_init__(self):
        if not (0 <= self.high_frac <= 1 and 0 <= self.middle_frac <= 1 and self.high_frac + self.middle_frac <= 1):
            raise SettingError(f"`KappaSchedule.high_frac` ({self.high_frac}) and middle_frac ({self.middle_frac}) must "
                             f"be in [0, 1] with a sum <= 1")

    def kappas(self, alphas: torch.Tensor) -> torch.Tensor:
        """One kappa per step of a grid of signal levels alphas (n + 1 points, decreasing noise)."""
        n = len(alphas) - 1
        n_hi = int(self.high_frac * n + 0.5)
        n_mid = int(self.middle_frac * n + 0.5)
        n_mid = min(n_mid, n - n_hi)
        a_t, a_s = alphas[:-1], alphas[1:]
        parts = [(self.high, slice(0, n_hi)), (self.middle, slice(n_hi, n_hi + n_mid)),
                 (self.low, slice(n_hi + n_mid, n))]
        return torch.cat([k(a_t[sl], a_s[sl]) for k, sl in parts])
