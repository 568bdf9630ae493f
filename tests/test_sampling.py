"""Samplers with an oracle denoiser reproduce a tiny enumerable data distribution."""

import pytest
import torch
from scipy.stats import chisquare

from duolm.processes import AbsorbingProcess, UniformProcess
from duolm.sampling import ancestral_sample, sample_categorical
from duolm.schedules import LogLinear
from oracles import all_sequences, oracle_posterior_marginals, random_joint

K = 3


def oracle_denoiser(process, joint, L):
    seqs = all_sequences(K, L)

    def den(x_t, alpha_t):
        post = oracle_posterior_marginals(process, seqs, joint, x_t, alpha_t.reshape(-1, 1).double(),
                                          exclude_self=process.kind == "uniform")
        return post.clamp_min(1e-300).log()

    return den


def empirical(samples, L):
    idx = (samples * torch.tensor([K ** (L - 1 - i) for i in range(L)])).sum(-1)
    return torch.bincount(idx, minlength=K ** L).double()


def test_sample_categorical_matches_its_probabilities():
    p = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    x = sample_categorical(p.expand(60_000, 3), torch.Generator().manual_seed(0))
    counts = torch.bincount(x, minlength=3).double()
    assert chisquare(counts.numpy(), (p * 60_000).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("process", [AbsorbingProcess(K), UniformProcess(K)], ids=lambda p: p.kind)
@pytest.mark.parametrize("steps", [1, 4, 32])
def test_one_token_is_sampled_exactly_at_any_step_count(process, steps):
    """For one token the oracle's plug-in reverse step is the exact reverse step, so the
    ancestral sampler is exact at every step count: a chi-square test at p > 1e-3."""
    joint = random_joint(K, 1, seed=3)
    n = 6000
    x = ancestral_sample(oracle_denoiser(process, joint, 1), process, LogLinear(eps=0.0), (n, 1), steps=steps,
                         noise_removal="ancestral", eps=0.0, generator=torch.Generator().manual_seed(steps))
    assert chisquare(empirical(x, 1).numpy(), (joint * n).numpy()).pvalue > 1e-3


@pytest.mark.parametrize("process", [AbsorbingProcess(K), UniformProcess(K)], ids=lambda p: p.kind)
def test_two_correlated_tokens_are_reproduced_with_many_steps(process):
    """Per-token sampling of a correlated pair becomes exact as steps grow (one change at a time):
    at 128 steps the total-variation distance to the data is below 0.04 (n = 6000: noise ~ 0.015)."""
    joint = random_joint(K, 2, seed=4)
    n = 6000
    x = ancestral_sample(oracle_denoiser(process, joint, 2), process, LogLinear(eps=0.0), (n, 2), steps=128,
                         noise_removal="ancestral", eps=1e-4, generator=torch.Generator().manual_seed(0))
    tv = 0.5 * (empirical(x, 2) / n - joint).abs().sum().item()
    assert tv < 0.04
    # and a single step (all tokens independently) is visibly worse: the test can fail
    x1 = ancestral_sample(oracle_denoiser(process, joint, 2), process, LogLinear(eps=0.0), (n, 2), steps=1,
                          noise_removal="ancestral", eps=1e-4, generator=torch.Generator().manual_seed(1))
    assert 0.5 * (empirical(x1, 2) / n - joint).abs().sum().item() > tv


def test_greedy_tail_returns_the_argmax_and_keeps_unmasked_tokens():
    proc = AbsorbingProcess(K)
    target = torch.tensor([2, 0, 1])

    def den(x_t, alpha_t):
        out = torch.full((*x_t.shape, K + 1), -1e6, dtype=torch.float64)
        out[..., :K] = torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
        out[:, torch.arange(3), target] = 0.0  # the argmax at each position is target
        return out.log_softmax(-1)

    x = ancestral_sample(den, proc, LogLinear(), (5, 3), steps=1, noise_removal="greedy")
    assert (x == target).all()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="sampling.steps must be >= 1"):
        ancestral_sample(None, UniformProcess(3), LogLinear(), (1, 1), steps=0)
    with pytest.raises(ValueError, match="sampling.noise_removal must be one of"):
        ancestral_sample(None, UniformProcess(3), LogLinear(), (1, 1), steps=2, noise_removal="sometimes")
