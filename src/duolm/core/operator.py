"""Duo's diffusion transformation operator T: Gaussian log-SNR gamma -> uniform-state alpha.

With w = alpha_tilde * onehot(x) + sigma_tilde * eps, eps ~ N(0, I_K), and the
variance-preserving pair alpha_tilde^2 = sigmoid(-gamma), sigma_tilde^2 = sigmoid(gamma),
argmax(w) is distributed as Cat(alpha * onehot(x) + (1 - alpha) / K) with

    P(argmax = x) = integral phi(z - mu) Phi(z)^(K-1) dz,   mu = alpha_tilde / sigma_tilde = exp(-gamma / 2)
    alpha = (K P - 1) / (K - 1).

The integral is evaluated by a fixed composite Gauss-Legendre rule in z: the
factor G(z) = Phi(z)^(K-1) depends only on K, so it is computed once, and each
gamma costs one exp per node (a matrix-vector product over all gammas at once).
Beyond z_hi, where G = 1 to within 1e-12 / K, the tail is Phi(mu - z_hi) in
closed form; below z_lo, G < 1e-15. The papers' code instead integrates point
by point, or uses a 150-term series that breaks down below gamma = -4.2, or a
pickled table for two tokenizers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from duolm.errors import SettingError

_PANEL = 1.0         # width of one Gauss-Legendre panel in z (measured: 3e-13 worst error against scipy)
_NODES = 16          # nodes per panel
_SQRT_2PI = math.sqrt(2 * math.pi)


def _log_ndtr(z: torch.Tensor) -> torch.Tensor:
    return torch.special.log_ndtr(z)


@dataclass
class OperatorOutput:
    alpha: torch.Tensor      # T(gamma)
    dalpha: torch.Tensor     # dT/dgamma (negative: more noise, less signal)


class DiffusionTransform:
    """T(gamma; K) and dT/dgamma for one vocabulary size K >= 2, vectorised over gamma."""

    def __init__(self, vocab_size: int):
        if vocab_size < 2:
            raise ValueError(f"the diffusion transformation operator needs a vocabulary of >= 2 tokens, got {vocab_size}")
        K = self.K = int(vocab_size)
        # z_hi: (K - 1) * Q(z_hi) < 1e-13, so G(z) = 1 beyond it to that accuracy
        z_hi = 1.0
        while (K - 1) * 0.5 * math.erfc(z_hi / math.sqrt(2)) > 1e-13:
            z_hi += 0.25
        # z_lo: G(z_lo) = exp((K - 1) log Phi(z_lo)) < 1e-15
        z_lo = z_hi
        while (K - 1) * float(_log_ndtr(torch.tensor(z_lo, dtype=torch.float64))) > math.log(1e-15):
            z_lo -= 0.25
        n_panels = math.ceil((z_hi - z_lo) / _PANEL - 1e-9)
        z_lo = z_hi - n_panels * _PANEL
        self.z_lo, self.z_hi = z_lo, z_hi
        x, w = np.polynomial.legendre.leggauss(_NODES)
        left = z_lo + _PANEL * np.arange(n_panels)[:, None]
        z = (left + _PANEL * (x[None] + 1) / 2).reshape(-1)
        wz = np.tile(w * _PANEL / 2, n_panels)
        self.z = torch.tensor(z, dtype=torch.float64)
        logG = (K - 1) * _log_ndtr(self.z)
        self.wG = torch.tensor(wz, dtype=torch.float64) * torch.exp(logG)  # weights times G(z)
        # dG/dz = (K - 1) phi(z) Phi(z)^(K-2), for the derivative by parts (a positive integrand)
        log_phi = -0.5 * self.z ** 2 - math.log(_SQRT_2PI)
        self.wdG = torch.tensor(wz, dtype=torch.float64) * (K - 1) * torch.exp(log_phi + (K - 2) * _log_ndtr(self.z))

    def prob_correct(self, gamma: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
        """P(argmax(w) = x) and dP/dmu, float64, same shape as gamma."""
        g = torch.as_tensor(gamma, dtype=torch.float64)
        shape = g.shape
        mu = torch.exp(-g.reshape(-1) / 2)
        P = torch.empty_like(mu)
        dP = torch.empty_like(mu)
        for s in range(0, mu.numel(), chunk):
            m = mu[s:s + chunk, None]
            phi = torch.exp(-0.5 * (self.z[None] - m) ** 2) / _SQRT_2PI   # (n, nodes)
            tail = torch.special.ndtr(m[:, 0] - self.z_hi)              # integral of phi(z - mu) beyond z_hi
            P[s:s + chunk] = phi @ self.wG + tail
            # dP/dmu = integral phi(z - mu) dG(z) over the finite range (G is flat beyond z_hi)
            dP[s:s + chunk] = phi @ self.wdG
        return P.reshape(shape), dP.reshape(shape)

    def __call__(self, gamma: torch.Tensor) -> OperatorOutput:
        g = torch.as_tensor(gamma, dtype=torch.float64)
        P, dP_dmu = self.prob_correct(g)
        K = self.K
        alpha = (K * P - 1) / (K - 1)
        dmu_dgamma = -0.5 * torch.exp(-g / 2)
        dalpha = K / (K - 1) * dP_dmu * dmu_dgamma
        return OperatorOutput(alpha=alpha.clamp(0.0, 1.0), dalpha=dalpha)


def gaussian_coefficients(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_tilde, sigma_tilde) of the variance-preserving Gaussian diffusion at log-SNR gamma."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def gaussian_latents(x0: torch.Tensor, gammas, K: int, generator=None) -> list[torch.Tensor]:
    """w = alpha~ onehot(x_0) + sigma~ eps at each log-SNR of `gammas` (each (B,) or (B, 1)), all with
    the same eps: [(B, L, K) float32, ...]. One latent feeds Duo's curriculum (argmax(w) is the
    uniform-state x_t, softmax(w / tau) its relaxation); two on one trajectory feed DCD."""
    eps = torch.randn((*x0.shape, K), device=x0.device, generator=generator)
    onehot = F.one_hot(x0, K).float()
    out = []
    for g in gammas:
        a, s = (c.float().reshape(-1, 1, 1) for c in gaussian_coefficients(g.double().reshape(-1)))
        out.append(a * onehot + s * eps)
    return out


FIT_KINDS = ("poly3", "poly5", "poly7", "poly9", "sigmoid")


@dataclass
class AlphaFit:
    """alpha(t) over a gamma band, t in [0, 1] <-> gamma = gamma_min + t (gamma_max - gamma_min),
    approximated by a polynomial in t or by sigmoid(a + b t) (Duo++ uses such fits).

    ``max_error`` and ``max_error_dalpha`` are measured against the operator on a
    dense grid; the derivative is the fit's own exact derivative.
    """

    kind: str
    coeffs: torch.Tensor          # polynomial coefficients, highest degree first; or (a, b) for sigmoid
    gamma_min: float
    gamma_max: float
    max_error: float = float("nan")
    max_error_dalpha: float = float("nan")

    def __call__(self, t: torch.Tensor) -> OperatorOutput:
        t = torch.as_tensor(t, dtype=torch.float64)
        c = self.coeffs.to(t.device)
        if self.kind == "sigmoid":
            a = torch.sigmoid(c[0] + c[1] * t)
            return OperatorOutput(alpha=a, dalpha=a * (1 - a) * c[1])
        alpha = torch.zeros_like(t)
        dalpha = torch.zeros_like(t)
        for ci in c:  # Horner for the value and the derivative together
            dalpha = dalpha * t + alpha
            alpha = alpha * t + ci
        return OperatorOutput(alpha=alpha, dalpha=dalpha)


def fit_alpha(vocab_size: int, gamma_min: float, gamma_max: float, kind: str = "poly9",
              points: int = 4001) -> AlphaFit:
    """Fit alpha(t) = T(gamma(t)) over the band; t = 0 is gamma_min (least noise)."""
    if kind not in FIT_KINDS:
        raise SettingError(f"`CurriculumSchedule.mode` fit must be one of {list(FIT_KINDS)}, got {kind!r}")
    if not gamma_min < gamma_max:
        raise SettingError(f"`CurriculumSchedule.gamma_min` ({gamma_min}) must be below gamma_max ({gamma_max})")
    T = DiffusionTransform(vocab_size)
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    span = gamma_max - gamma_min
    exact = T(gamma_min + t * span)
    exact_dt = exact.dalpha * span
    if kind == "sigmoid":
        a = exact.alpha.clamp(1e-12, 1 - 1e-12)
        X = torch.stack([torch.ones_like(t), t], 1)
        coeffs = torch.linalg.lstsq(X, torch.logit(a)[:, None]).solution[:, 0]
    else:
        # Sobolev least squares: fit alpha and d alpha/dt together, because the NELBO weights the
        # loss by the derivative; a plain fit of alpha leaves the derivative 37% off at t = 0 for
        # poly5 (the papers' figure), this one 21%, and halves poly9's worst derivative error
        deg = int(kind[4:])
        tn = t.numpy()
        V = np.vander(tn, deg + 1)
        dV = np.zeros_like(V)
        for j in range(deg):
            dV[:, j] = (deg - j) * tn ** (deg - j - 1)
        lam = 0.1
        A = np.vstack([V, lam * dV])
        b = np.concatenate([exact.alpha.numpy(), lam * exact_dt.numpy()])
        coeffs = torch.tensor(np.linalg.lstsq(A, b, rcond=None)[0], dtype=torch.float64)
    fit = AlphaFit(kind, coeffs, gamma_min, gamma_max)
    approx = fit(t)
    fit.max_error = float((approx.alpha - exact.alpha).abs().max())
    fit.max_error_dalpha = float((approx.dalpha - exact_dt).abs().max())
    return fit
