"""duolm.rl's math against exact answers: advantages, the GRPO loss's gradient by finite differences,
and the sequence log-probability estimators against enumeration on a tiny vocabulary (the AR one
exact, the ELBO below the exact log-probability and tight for a masked model's exact denoiser, d1's
one-pass estimate measured)."""
from __future__ import annotations

import math

import pytest
import torch
from oracles import all_sequences, oracle_posterior_marginals, random_joint

from duolm.contracts import Capabilities
from duolm.core.methods import build_method
from duolm.core.parameterizations import NEG_INF
from duolm.core.schedules import LogLinear
from duolm.rl.grpo import group_advantages, grpo_loss, k3_kl
from duolm.rl.logprob import sequence_logprob


def test_group_advantages_are_centred_and_scaled_per_group():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 3.0, 0.0, 0.0]])
    a = group_advantages(r)
    assert torch.allclose(a.mean(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(a[0], torch.tensor([1.0, -1, -1, 1], dtype=torch.float64), atol=1e-5)
    assert torch.equal(a[1], torch.zeros(4, dtype=torch.float64))  # no signal in a group that agrees
    assert torch.allclose(group_advantages(r, "none")[2], torch.tensor([-0.75, 2.25, -0.75, -0.75], dtype=torch.float64))


def test_the_k3_kl_is_nonnegative_and_unbiased():
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = k3_kl(p.log()[y], q.log()[y])
    assert (est >= 0).all()
    assert abs(est.mean().item() - float((p * (p / q).log()).sum())) < 5e-3


def test_the_grpo_loss_gradient_equals_finite_differences_on_two_tokens():
    """A policy over 2 tokens, softmax(theta); 6 completions with advantages, old log-probabilities
    putting some ratios outside the clip range, a KL to a reference: autograd = central differences."""
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.3, 0.7], dtype=torch.float64)
    old = torch.tensor([-0.2, -2.5, -0.4, -1.9, -1.2, -0.05], dtype=torch.float64)
    ref = torch.tensor([-0.7, -0.7, -0.7, -0.7, -0.7, -0.7], dtype=torch.float64)

    def loss(theta):
        logp = torch.log_softmax(theta, -1)[y]
        return grpo_loss(logp, old, adv, clip=0.2, logp_ref=ref, beta=0.1)

    theta = torch.tensor([0.3, -0.4], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(theta), theta)
    h = 1e-6
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        fd = (loss(theta.detach() + e) - loss(theta.detach() - e)) / (2 * h)
        assert abs(fd.item() - grad[i].item()) < 1e-7
    ratios = torch.exp(torch.log_softmax(theta.detach(), -1)[y] - old)
    assert ((ratios < 0.8) | (ratios > 1.2)).any() and ((ratios > 0.8) & (ratios < 1.2)).any()


K, L, P = 3, 3, 1  # vocabulary, sequence length, prompt length


def _oracle(method, joint):
    seqs = all_sequences(K, L)

    def oracle(x_t, sigma, weights=None):
        alpha = torch.exp(-sigma.double()).reshape(-1, 1)
        return torch.where(torch.isfinite(p := oracle_posterior_marginals(method.process, seqs, joint, x_t, alpha,
                                                                        exclude_self=method.process.kind == "uniform")
                                          .clamp_min(0).log()), p, torch.full_like(p, NEG_INF))

    oracle.capabilities = Capabilities(time_conditioning=True)
    return oracle


def _exact_conditional(joint, x):
    seqs = all_sequences(K, L)
    same_prompt = (seqs[:, :P] == x[:P]).all(-1)
    i = int(((seqs == x).all(-1)).nonzero()[0, 0])
    return math.log(joint[i]) - math.log(joint[same_prompt].sum())


@pytest.mark.parametrize("algo", ["mdlm", "duo_base"])
def test_the_elbo_estimator_bounds_the_exact_log_probability(algo):
    """With the exact denoiser of a known distribution over 3-token sequences: the ELBO estimate of
    log p(completion | prompt) averages below the exact value (for the masked model, to within its
    Monte Carlo error: its bound is tight for the exact denoiser), and its spread falls like
    1 / sqrt(samples)."""
    joint = random_joint(K, L, seed=4)
    method = build_method(algo, K, schedule=LogLinear(eps=0.0 if algo == "mdlm" else 1e-3), loss_dtype=torch.float64)
    method.time_conditioning = True  # the oracle reads the noise level
    oracle = _oracle(method, joint)
    x = all_sequences(K, L)[int(torch.argmax(joint))]
    exact = _exact_conditional(joint, x)
    n = 4000
    seqs = x.expand(n, L).clone()
    prompt = torch.zeros(n, L, dtype=torch.bool)
    prompt[:, :P] = True
    g = torch.Generator().manual_seed(0)
    one = sequence_logprob(method, oracle, seqs, prompt, ~prompt, estimator="elbo", samples=1, generator=g)
    four = sequence_logprob(method, oracle, seqs[:1000], prompt[:1000], ~prompt[:1000], estimator="elbo", samples=4,
                            generator=g)
    se = one.std().item() / math.sqrt(n)
    assert one.mean().item() <= exact + 4 * se
    if algo == "mdlm":
        assert abs(one.mean().item() - exact) < 4 * se + 2e-3, (one.mean().item(), exact, se)
    else:  # a measured gap below the exact value
        assert one.mean().item() < exact - 0.01, (one.mean().item(), exact)
    assert four.std().item() < 0.6 * one.std().item()


def test_diffu_grpo_is_the_sum_of_marginals_and_its_bias_is_the_dependence_it_ignores():
    """d1's one-pass estimate (prompt kept whole) with the exact denoiser is sum_i log p(x_i | prompt):
    it misses log p(x | prompt) by the completion tokens' pointwise dependence given the prompt."""
    joint = random_joint(K, L, seed=4)
    method = build_method("mdlm", K, schedule=LogLinear(eps=0.0), loss_dtype=torch.float64)
    method.time_conditioning = True
    oracle = _oracle(method, joint)
    seqs = all_sequences(K, L)
    prompt = torch.zeros(len(seqs), L, dtype=torch.bool)
    prompt[:, :P] = True
    est = sequence_logprob(method, oracle, seqs, prompt, ~prompt, estimator="diffu_grpo", prompt_mask=0.0)
    for k, x in enumerate(seqs):
        same = (seqs[:, :P] == x[:P]).all(-1)
        cond = joint[same] / joint[same].sum()
        marg = sum(math.log(float(cond[(seqs[same][:, i] == x[i])].sum())) for i in range(P, L))
        assert abs(est[k].item() - marg) < 1e-9
    gap = torch.tensor([est[k].item() - _exact_conditional(joint, x) for k, x in enumerate(seqs)])
    assert gap.abs().max() > 0.05  # a bias, not noise: the exact estimator is the ELBO's or AR's


def test_the_exact_estimator_is_a_distribution_for_ar():
    from duolm.models.dit import DiT, DiTConfig

    method = build_method("ar", K)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2,
                        dropout=0.0, causal=True)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    seqs = all_sequences(K, L)
    seqs = seqs[seqs[:, 0] == 1]  # one prompt token, every completion
    prompt = torch.zeros(len(seqs), L, dtype=torch.bool)
    prompt[:, :P] = True
    with torch.no_grad():
        lp = sequence_logprob(method, net, seqs, prompt, ~prompt, estimator="exact")
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-5  # the completions' probabilities sum to 1


def test_an_estimator_that_does_not_fit_the_method_is_one_sentence():
    from said_as import raises_said_as

    with raises_said_as("diffu_grpo masks the completion, which needs a masked method"):
        sequence_logprob(build_method("duo", K), None, torch.zeros(1, L, dtype=torch.long),
                         torch.zeros(1, L, dtype=torch.bool), torch.ones(1, L, dtype=torch.bool),
                         estimator="diffu_grpo")


@pytest.mark.parametrize("algo", ["ar", "mdlm", "duo"])
def test_a_few_dozen_grpo_updates_raise_a_reward_that_prefers_one_token(algo):
    """A tiny DiT per method, prompts of one token, 8 completions each of 5 tokens; the reward is the
    share of completion tokens equal to token 2. The mean reward of the last 5 of 40 updates is above
    that of the first 5 (ELBO for MDLM and Duo, exact for AR; the same draws for old and new)."""
    from duolm.models.dit import DiT, DiTConfig
    from duolm.rl.groups import sample_groups
    from duolm.rl.update import grpo_update
    from duolm.sampling.spec import SamplerSpec

    torch.manual_seed(0)
    V, length = 4, 6
    method = build_method(algo, V)
    if algo == "duo":
        method = build_method("duo_base", V)  # Duo's NELBO without its curriculum's relaxed inputs
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2,
                        dropout=0.0, causal=algo == "ar"))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    # draws to the end (a fresh network's predictions are uniform: a greedy last step would give every
    # completion the same tokens, and a group that agrees has no advantage to learn from)
    spec = SamplerSpec(predictor="auto", steps=6, noise_removal="ancestral")
    g = torch.Generator().manual_seed(1)
    rewards_seen = []
    for step in range(40):
        groups = sample_groups(method, net, [[0], [1]], 8, length, spec, bos_id=0, generator=g)
        comp = groups.completions()
        rewards = torch.tensor([sum(t == 2 for t in c) / max(len(c), 1) for c in comp]).reshape(2, 8)
        grpo_update(method, net, opt, groups, rewards, estimator="exact" if algo == "ar" else "elbo", samples=2,
                    iterations=2, generator=g)
        rewards_seen.append(float(rewards.mean()))
    first, last = sum(rewards_seen[:5]) / 5, sum(rewards_seen[-5:]) / 5
    assert last > first + 0.15, (algo, first, last)
