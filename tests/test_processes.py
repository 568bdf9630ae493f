import itertools

import pytest
import torch

from duolm.core.processes import AbsorbingProcess, UniformProcess

K = 4


def processes():
    return [AbsorbingProcess(K), UniformProcess(K)]


def transition(process, a_from, a_to):
    """Exact one-step transition matrix Q[i, j] = q(x_to = j | x_from = i) between two signal levels."""
    S = process.num_states
    eye = torch.eye(S, dtype=torch.float64)
    ratio = torch.tensor(a_to / a_from, dtype=torch.float64)
    if isinstance(process, AbsorbingProcess):
        Q = ratio * eye
        Q[:, process.mask_id] += 1 - ratio
        Q[process.mask_id] = eye[process.mask_id]
        return Q
    return process.marginal(eye, ratio)


@pytest.mark.parametrize("process", processes(), ids=lambda p: p.kind)
def test_posterior_is_bayes_rule_on_the_joint(process):
    a_s, a_t = 0.7, 0.3
    S = process.num_states
    eye = torch.eye(S, dtype=torch.float64)
    Q_s = process.marginal(eye[:K], torch.tensor(a_s, dtype=torch.float64))  # (K, S) q(x_s | x_0)
    Q_ts = transition(process, a_s, a_t)                                     # (S, S) q(x_t | x_s)
    # the chain x_0 -> x_s -> x_t must reproduce the marginal at a_t
    torch.testing.assert_close(Q_s @ Q_ts, process.marginal(eye[:K], torch.tensor(a_t, dtype=torch.float64)))
    for x0, xt in itertools.product(range(K), range(S)):
        joint = Q_s[x0] * Q_ts[:, xt]  # q(x_s, x_t | x_0) as a function of x_s
        if joint.sum() == 0:
            continue
        post = process.posterior(eye[x0][None], torch.tensor([xt]), torch.tensor([a_s]), torch.tensor([a_t]))[0]
        torch.testing.assert_close(post, joint / joint.sum())


@pytest.mark.parametrize("process", processes(), ids=lambda p: p.kind)
def test_posterior_for_a_predicted_distribution_is_the_normalised_mixture(process):
    g = torch.Generator().manual_seed(0)
    a_s, a_t = 0.6, 0.2
    S = process.num_states
    eye = torch.eye(S, dtype=torch.float64)
    p = torch.rand(K, generator=g, dtype=torch.float64)
    p = torch.cat([p / p.sum(), torch.zeros(S - K, dtype=torch.float64)])
    Q_s = process.marginal(eye[:K], torch.tensor(a_s, dtype=torch.float64))
    Q_ts = transition(process, a_s, a_t)
    for xt in range(S):
        joint = (p[:K, None] * Q_s * Q_ts[:, xt][None]).sum(0)
        post = process.posterior(p[None], torch.tensor([xt]), torch.tensor([a_s]), torch.tensor([a_t]))[0]
        torch.testing.assert_close(post, joint / joint.sum())


def test_absorbing_posterior_sums_to_one_in_float32_for_a_raw_softmax():
    """The papers' code needs float64 and a pre-masked softmax; ours normalises any input."""
    proc = AbsorbingProcess(50)
    logits = torch.randn(8, 16, 51) * 5
    x_t = torch.randint(0, 51, (8, 16))
    x_t[:, ::2] = proc.mask_id
    post = proc.posterior(logits.softmax(-1), x_t, torch.full((8, 1), 0.5), torch.full((8, 1), 0.4999))
    torch.testing.assert_close(post.sum(-1), torch.ones(8, 16))
    assert (post >= 0).all()


@pytest.mark.parametrize("process", processes(), ids=lambda p: p.kind)
def test_sample_xt_matches_the_marginal(process):
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = torch.full((n,), 2)
    alpha = 0.35
    xt = process.sample_xt(x0, torch.tensor(alpha), generator=g)
    freq = torch.bincount(xt, minlength=process.num_states).double() / n
    expect = process.marginal(torch.eye(process.num_states, dtype=torch.float64)[2], torch.tensor(alpha))
    # binomial standard error is at most 0.0012 here; 5 sigma
    torch.testing.assert_close(freq, expect, atol=0.006, rtol=0)


def test_prior_sample_and_prior_kl():
    u = UniformProcess(5)
    x = u.prior_sample((1000,), generator=torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() < 5
    x0 = torch.zeros(3, 2, dtype=torch.long)
    assert torch.allclose(u.prior_kl(x0, torch.zeros(3, 1)), torch.zeros(3, 2))
    assert (u.prior_kl(x0, torch.full((3, 1), 0.1)) > 0).all()
    a = AbsorbingProcess(5)
    assert (a.prior_sample((2, 3)) == 5).all()
    assert torch.isinf(a.prior_kl(x0, torch.full((3, 1), 1e-3))).all()
