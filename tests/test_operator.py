"""The diffusion transformation operator against integration, Monte Carlo and closed forms."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from duolm.core.operator import DiffusionTransform, fit_alpha, gaussian_coefficients


def scipy_alpha(K: int, gamma: float) -> float:
    mu = math.exp(-gamma / 2)
    f = lambda z: stats.norm.pdf(z - mu) * math.exp((K - 1) * stats.norm.logcdf(z))  # noqa: E731
    P = integrate.quad(f, -40, 40 + mu, epsabs=1e-14, epsrel=1e-12, limit=1000)[0]
    return (K * P - 1) / (K - 1)


@pytest.mark.parametrize("K", [2, 3, 28, 1000, 30522, 50257])
def test_matches_adaptive_integration_to_1e_minus_7(K):
    T = DiffusionTransform(K)
    gammas = np.linspace(-12, 12, 25)
    got = T(torch.tensor(gammas)).alpha
    ref = torch.tensor([scipy_alpha(K, g) for g in gammas], dtype=torch.float64)
    assert (got - ref).abs().max() < 1e-7


@pytest.mark.parametrize("K", [2, 28, 50257])
def test_derivative_matches_finite_differences(K):
    T = DiffusionTransform(K)
    g = torch.linspace(-9, 9, 37, dtype=torch.float64)
    h = 1e-5
    fd = (T(g + h).alpha - T(g - h).alpha) / (2 * h)
    torch.testing.assert_close(T(g).dalpha, fd, atol=1e-8, rtol=1e-6)
    assert (T(g).dalpha <= 0).all()


def test_two_tokens_match_the_closed_form():
    g = torch.linspace(-15, 15, 61, dtype=torch.float64)
    mu = torch.exp(-g / 2)
    # P(mu + e1 > e2) = Phi(mu / sqrt 2)
    expect = 2 * torch.special.ndtr(mu / math.sqrt(2)) - 1
    torch.testing.assert_close(DiffusionTransform(2)(g).alpha, expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize("K", [4, 1000])
def test_monotone_with_limits_zero_and_one(K):
    T = DiffusionTransform(K)
    g = torch.linspace(-40, 40, 801, dtype=torch.float64)
    a = T(g).alpha
    assert (a[1:] <= a[:-1] + 1e-15).all()  # more log-SNR noise, less signal
    assert a[0] == pytest.approx(1.0, abs=1e-12) and a[-1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("K,gamma", [(5, -1.0), (5, 1.5), (200, -2.0), (200, -1.0)])
def test_argmax_of_gaussian_latents_is_uniform_state_diffusion(K, gamma):
    """Monte Carlo: argmax(alpha~ onehot(x) + sigma~ eps) ~ Cat(alpha onehot(x) + (1 - alpha)/K).

    n = 200,000 draws; the frequency of x and the spread over the other tokens
    must match within 5 standard errors, and the other tokens must be uniform (chi-square).
    """
    g = torch.Generator().manual_seed(0)
    n = 200_000
    at, st = gaussian_coefficients(torch.tensor(gamma, dtype=torch.float64))
    w = st * torch.randn(n, K, generator=g, dtype=torch.float64)
    w[:, 0] += at
    xt = w.argmax(-1)
    alpha = DiffusionTransform(K)(torch.tensor(gamma)).alpha.item()
    p0 = alpha + (1 - alpha) / K
    freq0 = (xt == 0).double().mean().item()
    assert abs(freq0 - p0) < 5 * math.sqrt(p0 * (1 - p0) / n)
    others = torch.bincount(xt[xt != 0], minlength=K)[1:].double().numpy()
    assert stats.chisquare(others).pvalue > 1e-4


def test_reference_series_breaks_down_at_low_gamma():
    """The papers' 150-term series for T diverges below gamma ~ -4.2; our quadrature does not."""
    T = DiffusionTransform(50257)
    a = T(torch.tensor([-4.0, -5.0, -8.0], dtype=torch.float64)).alpha
    ref = torch.tensor([scipy_alpha(50257, x) for x in (-4.0, -5.0, -8.0)], dtype=torch.float64)
    assert (a - ref).abs().max() < 1e-9


@pytest.mark.parametrize("K", [28, 50257])
def test_polynomial_fits_converge_with_degree_and_report_their_error(K):
    errs = [fit_alpha(K, -3.55, -1.85, f"poly{d}").max_error for d in (3, 5, 7, 9)]
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-4
    fit = fit_alpha(K, -3.55, -1.85, "poly9")
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (fit(t + h).alpha - fit(t - h).alpha) / (2 * h)
    torch.testing.assert_close(fit(t).dalpha, fd, atol=1e-6, rtol=1e-6)  # the fit's own exact derivative


def test_fit_derivatives_are_right_where_the_loss_weights_them():
    """The papers' poly5 derivative is 37% off at t = 0; fitting alpha and its derivative
    together brings poly5 to 22% and poly9 to 0.1% of T'(gamma) there (K = 50,257, OWT band)."""
    T = DiffusionTransform(50257)
    exact = T(torch.tensor([-3.55], dtype=torch.float64)).dalpha * 1.7
    rel = {k: abs((fit_alpha(50257, -3.55, -1.85, k)(torch.zeros(1)).dalpha - exact) / exact).item()
           for k in ("poly5", "poly9")}
    assert rel["poly5"] < 0.25 and rel["poly9"] < 0.002


def test_sigmoid_fit_derivative_is_the_full_derivative():
    """The papers' sigmoid-fit derivative is half the true one; ours matches finite differences."""
    fit = fit_alpha(1000, -3.0, 3.0, "sigmoid")
    t = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    h = 1e-6
    fd = (fit(t + h).alpha - fit(t - h).alpha) / (2 * h)
    torch.testing.assert_close(fit(t).dalpha, fd, atol=1e-7, rtol=1e-6)
    half = 0.5 * fit(t).dalpha  # what the reference would use
    assert (half - fd).abs().max() > 0.1
    # a sigmoid is a poor shape for T over a wide band, and the fit says so
    assert 0.1 < fit.max_error < 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match=">= 2 tokens"):
        DiffusionTransform(1)
    with pytest.raises(ValueError, match="must be one of"):
        fit_alpha(10, -3, -1, "poly4")
    with pytest.raises(ValueError, match="must be below"):
        fit_alpha(10, -1, -3, "poly5")
