"""Duo's curricula: the relaxations against their dense definitions, and the schedule."""
import math

import pytest
import torch
from said_as import raises_said_as
from scipy import stats

from duolm.core.operator import DiffusionTransform, gaussian_latents
from duolm.training.curriculum import CurriculumSchedule, _distinct_other_ids, top_order_statistics, topk_relaxation


def test_top_order_statistics_match_sorting_dense_draws():
    g = torch.Generator().manual_seed(0)
    n, k, draws = 2000, 5, 4000
    fast = top_order_statistics((draws,), n, k, torch.ones(draws), generator=g)
    dense = torch.randn(draws, n, generator=g, dtype=torch.float64).topk(k, -1).values
    assert (fast[:, :-1] >= fast[:, 1:]).all()
    for j in range(k):  # two-sample Kolmogorov-Smirnov per order statistic
        assert stats.ks_2samp(fast[:, j].numpy(), dense[:, j].numpy()).pvalue > 1e-3


def test_x_t_is_the_true_argmax_with_the_operator_marginal():
    """The papers' sampler gives P(x_t = x_0) = 0.91 here; the exact value is 0.59."""
    K, k, gamma = 1000, 16, -2.5
    g = torch.Generator().manual_seed(1)
    n = 40_000
    x0 = torch.randint(0, K, (n, 1), generator=g)
    _, _, x_t = topk_relaxation(x0, torch.full((n, 1), gamma), K, k, tau=0.1, generator=g)
    alpha = DiffusionTransform(K)(torch.tensor(gamma)).alpha.item()
    p = alpha + (1 - alpha) / K
    assert abs(p - 0.59) < 0.01
    freq = (x_t == x0).double().mean().item()
    assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_every_other_token_is_equally_likely_to_become_x_t():
    """Exchangeability: when x_t != x_0, x_t is uniform over the K - 1 other ids (the papers'
    sampler can never put its highest k - 1 ids there)."""
    K, k = 12, 4
    g = torch.Generator().manual_seed(2)
    n = 60_000
    x0 = torch.full((n, 1), 3)
    _, _, x_t = topk_relaxation(x0, torch.full((n, 1), 1.0), K, k, tau=1.0, generator=g)
    wrong = x_t[x_t != 3]
    counts = torch.bincount(wrong, minlength=K).double()
    counts = torch.cat([counts[:3], counts[4:]])
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    ids = _distinct_other_ids(torch.full((5000, 1), 3), K, k, g)
    assert not (ids == 3).any()
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()


@pytest.mark.parametrize("tau", [0.3, 1.0])
def test_topk_weights_approach_the_dense_tempered_softmax_as_k_grows(tau):
    """Mean weight on x_t and on x_0, and the total mass the k ids carry, against the dense relaxation."""
    K, gamma, n = 400, 0.0, 6000
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, K, (n, 1), generator=g)
    w = gaussian_latents(x0, [torch.full((n, 1), gamma)], K, generator=g)[0].double()
    soft = (w / tau).softmax(-1)
    dense = {"top": soft.max(-1).values.mean().item(),
             "true": soft.gather(-1, x0[..., None]).mean().item()}
    errs = []
    for k in (1, 4, 16, 64):
        ids, weights, _ = topk_relaxation(x0, torch.full((n, 1), gamma), K, k, tau, generator=g)
        top = weights[..., 0].double().mean().item()
        true = (weights.double() * (ids == x0[..., None])).sum(-1).mean().item()
        errs.append(max(abs(top - dense["top"]), abs(true - dense["true"])))
    assert errs[-1] < 0.02
    assert errs[-1] < errs[0]


def test_schedule_tau_and_switch():
    s = CurriculumSchedule(tau_log10_start=-1, tau_log10_end=-3, start=10, end=30)
    assert s.tau(0) == pytest.approx(0.1) and s.tau(10) == pytest.approx(0.1)
    assert s.tau(20) == pytest.approx(0.01) and s.tau(30) == pytest.approx(0.001)
    assert s.active(30) and not s.active(31)
    assert not CurriculumSchedule(mode="none").active(0)


@pytest.mark.parametrize("kwargs,msg", [(dict(mode="cubic"), "algo.curriculum.mode must be one of"),
                                        (dict(gamma_min=1, gamma_max=0), "must be below"),
                                        (dict(start=5, end=2), "0 <= start <= end"),
                                        (dict(mode="simple", top_k=8), "needs an efficient mode"),
                                        (dict(mode="poly9", top_k=0), "top_k must be -1")])
def test_bad_schedules(kwargs, msg):
    with raises_said_as(msg):
        CurriculumSchedule(**kwargs)


@pytest.mark.parametrize("k,gamma", [(16, -0.5), (64, -2.0)])
def test_true_token_weight_has_the_dense_distribution(k, gamma):
    """x_0 is among the k ids as often as it ranks in the top k of the dense latents, and its
    weight then follows the dense tempered softmax's (two-sample KS, p > 1e-3, K = 400)."""
    K, tau, n = 400, 0.5, 5000
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, K, (n, 1), generator=g)
    w = gaussian_latents(x0, [torch.full((n, 1), gamma)], K, generator=g)[0].double()
    dense = (w / tau).softmax(-1).gather(-1, x0[..., None]).reshape(-1)
    in_dense_top = ((w > w.gather(-1, x0[..., None])).sum(-1) < k).reshape(-1)
    ids, weights, _ = topk_relaxation(x0, torch.full((n, 1), gamma), K, k, tau, generator=g)
    in_top = (ids == x0[..., None]).any(-1).reshape(-1)
    fast = (weights.double() * (ids == x0[..., None])).sum(-1).reshape(-1)
    p = in_dense_top.double().mean().item()
    assert abs(in_top.double().mean().item() - p) < 5 * math.sqrt(2 * p * (1 - p) / n)
    assert stats.ks_2samp(dense[in_dense_top].numpy(), fast[in_top].numpy()).pvalue > 1e-3


def test_fits_follow_the_vocabulary_and_band():
    """The papers cache fitted coefficients under the mode name only; ours are computed for (K, band)."""
    from duolm.training.curriculum import Curriculum

    a = Curriculum(CurriculumSchedule(mode="poly9", gamma_min=-3.5, gamma_max=-1.75), 28)
    b = Curriculum(CurriculumSchedule(mode="poly9", gamma_min=-3.5, gamma_max=-1.75), 50257)
    c = Curriculum(CurriculumSchedule(mode="poly9", gamma_min=-2.7, gamma_max=1.5), 28)
    t = torch.tensor([0.5])
    assert len({round(x.alpha(t)[0].item(), 6) for x in (a, b, c)}) == 3
