"""Confidence-based parallel decoding (duolm.sampling.confidence): its reductions and invariants.

- Masked, threshold 1: LLaDA's low-confidence remasking with a linear count schedule, draw for
  draw against a plain per-row loop written here.
- Uniform-state, threshold 1 and min_per_step 0: ancestral sampling, draw for draw.
- Committed tokens never change; the budget bounds the calls; a confident denoiser finishes early.
- Inside blocks (block diffusion with the KV cache): cached equals cache-free draw for draw.
"""
from __future__ import annotations

import math

import pytest
import torch
from oracles import all_sequences, oracle_posterior_marginals, random_joint
from said_as import raises_said_as

from duolm.core.methods import build_method
from duolm.core.processes import AbsorbingProcess, UniformProcess
from duolm.core.schedules import LogLinear
from duolm.sampling import SAMPLERS, SamplerSpec, ancestral_sample
from duolm.sampling.blocks import block_sample
from duolm.sampling.confidence import ConfidenceOptions, confidence_sample
from duolm.sampling.observers import Recorder

K = 5


def network(process, L, seed=0):
    """A fixed random 'denoiser': logits from a linear map of the one-hot x_t (B, L, states) -> (B, L, K),
    so confidences vary with the context and between positions."""
    g = torch.Generator().manual_seed(seed)
    S = process.num_states
    W = torch.randn(L * S, L * K, generator=g, dtype=torch.float64) * 1.5

    def den(x_t, alpha_t):
        h = torch.nn.functional.one_hot(x_t, S).double().reshape(x_t.shape[0], -1) @ W
        logits = h.reshape(x_t.shape[0], L, K)
        out = torch.full((*x_t.shape, S), -torch.inf, dtype=torch.float64)
        out[..., :K] = logits.log_softmax(-1)
        return out

    return den


def low_confidence_remasking(den, mask_id, x, steps, block_length=None):
    """The reference: LLaDA's low-confidence remasking, one row at a time, over the window's
    generation blocks left to right (block_length None: one block; the budget split evenly, the
    first blocks taking the remainder). At step i of a block's n the masked positions of the block
    get the argmax of p(x_0 | x_t); the most confident of them (ties: the earlier position) are
    kept until ceil(free * (i + 1) / n) of the block are decoded; the rest stay masked."""
    x = x.clone()
    L = x.shape[1]
    size = block_length or L
    spans = [(a, min(a + size, L)) for a in range(0, L, size)]
    spans = [(a, b) for a, b in spans if (x[:, a:b] == mask_id).any()]
    if not spans:
        return x
    base, extra = divmod(steps, len(spans))
    for r in range(x.shape[0]):
        for j, (a, b) in enumerate(spans):
            budget = base + (j < extra)
            free = int((x[r, a:b] == mask_id).sum())
            for i in range(budget):
                masked = [q for q in range(a, b) if x[r, q] == mask_id]
                if not masked:
                    break
                p = den(x[r:r + 1], torch.zeros(1))[0].exp()
                p[:, mask_id] = 0
                p = p / p.sum(-1, keepdim=True)
                need = max(math.ceil(free * (i + 1) / budget) - (free - len(masked)), 1)
                for q in sorted(masked, key=lambda q: (-float(p[q].max()), q))[:need]:
                    x[r, q] = int(p[q].argmax())
    return x


@pytest.mark.parametrize("steps", [1, 3, 8, 16])
def test_masked_threshold_one_is_low_confidence_remasking_draw_for_draw(steps):
    L = 8
    proc = AbsorbingProcess(K)
    den = network(proc, L, seed=steps)
    prefix = torch.zeros(6, L, dtype=torch.bool)
    prefix[:, :2] = True
    values = torch.randint(0, K, (6, L), generator=torch.Generator().manual_seed(1))
    x0 = torch.where(prefix, values, torch.full((6, L), proc.mask_id))
    recorder = Recorder()
    stats = recorder.counts
    x = confidence_sample(den, proc, LogLinear(), (6, L), steps=steps, threshold=1.0, min_per_step=1,
                          fixed=(prefix, values), observer=recorder)
    assert torch.equal(x, low_confidence_remasking(den, proc.mask_id, x0, steps))
    assert stats["denoiser_calls"] == min(steps, L - 2)


@pytest.mark.parametrize("noise_removal", ["greedy", "ancestral"])
def test_uniform_threshold_one_without_a_minimum_is_ancestral_sampling_draw_for_draw(noise_removal):
    proc = UniformProcess(3)
    joint = random_joint(3, 3, seed=2)
    seqs = all_sequences(3, 3)

    def den(x_t, alpha_t):
        return oracle_posterior_marginals(proc, seqs, joint, x_t, alpha_t.reshape(-1, 1).double(),
                                          exclude_self=True).clamp_min(1e-300).log()

    kw = dict(noise_removal=noise_removal, eps=1e-4)
    a = ancestral_sample(den, proc, LogLinear(), (400, 3), steps=7, generator=torch.Generator().manual_seed(3), **kw)
    b = confidence_sample(den, proc, LogLinear(), (400, 3), steps=7, threshold=1.0, min_per_step=0,
                          generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("proposal", ["greedy", "sample"])
def test_committed_tokens_never_change(kind, proposal):
    L = 10
    proc = AbsorbingProcess(K) if kind == "absorbing" else UniformProcess(K)
    den = network(proc, L, seed=4)
    recorder = Recorder(states=True)
    seen, stats = recorder.states, recorder.counts
    x = confidence_sample(den, proc, LogLinear(), (20, L), steps=6, threshold=0.5, min_per_step=1,
                          proposal=proposal, generator=torch.Generator().manual_seed(0), observer=recorder)
    assert stats["committed_per_step"][0] >= 1
    # recompute which positions each step committed from the trajectory and the rule's own record:
    # a masked model's committed token is its first non-mask value; it must survive to the end
    if kind == "absorbing":
        for a, b in zip(seen, seen[1:]):
            unmasked = a != proc.mask_id
            assert torch.equal(a[unmasked], b[unmasked])
        assert (x != proc.mask_id).all()
    else:
        # threshold 0 commits every position at the first call, which ends the run
        recorder = Recorder(states=True)
        seen, stats = recorder.states, recorder.counts
        y = confidence_sample(den, proc, LogLinear(), (20, L), steps=6, threshold=0.0, min_per_step=1,
                              proposal=proposal, generator=torch.Generator().manual_seed(0), observer=recorder)
        assert stats["denoiser_calls"] == 1 and len(seen) == 2 and torch.equal(seen[1], y)
        # min_per_step=3 commits 3 a step (10 positions): the tokens of step k stay to the end
        recorder = Recorder(states=True)
        seen, stats = recorder.states, recorder.counts
        y = confidence_sample(den, proc, LogLinear(), (20, L), steps=6, threshold=1.0, min_per_step=3,
                              proposal=proposal, generator=torch.Generator().manual_seed(0), observer=recorder)
        assert stats["committed_per_step"] == [3.0, 3.0, 3.0, 1.0]
        # a position whose value after step 1 equals its final value in every later frame was committed
        # at step 1; at least 3 per row must be so
        frozen = torch.stack([(s == y) for s in seen[1:]]).all(0)
        assert (frozen.sum(-1) >= 3).all()


def test_a_confident_denoiser_finishes_before_the_budget():
    """An almost one-hot denoiser: with threshold 0.9 every position commits at the first call."""
    L = 12
    proc = AbsorbingProcess(K)
    target = torch.arange(L) % K

    def den(x_t, alpha_t):
        out = torch.full((*x_t.shape, K + 1), -torch.inf, dtype=torch.float64)
        out[..., :K] = math.log(0.01 / (K - 1))
        out[:, torch.arange(L), target] = math.log(0.99)
        return out

    recorder = Recorder()

    stats = recorder.counts
    x = confidence_sample(den, proc, LogLinear(), (3, L), steps=12, threshold=0.9, observer=recorder)
    assert stats["denoiser_calls"] == 1 and (x == target).all()
    recorder = Recorder()
    stats = recorder.counts
    confidence_sample(den, proc, LogLinear(), (3, L), steps=12, threshold=1.0, observer=recorder)
    assert stats["denoiser_calls"] == 12 and stats["committed_per_step"] == [1.0] * 12


def test_bad_settings_are_one_sentence_naming_the_key():
    with raises_said_as("sampling.confidence.threshold"):
        ConfidenceOptions(threshold=1.5)
    with raises_said_as("sampling.confidence.min_per_step"):
        ConfidenceOptions(min_per_step=-1)
    with raises_said_as("sampling.confidence.proposal"):
        ConfidenceOptions.from_settings({"proposal": "beam"})


@pytest.mark.parametrize("algo", ["mdlm", "duo_base"])
def test_inside_blocks_the_cached_run_equals_the_cache_free_one(algo):
    from duolm.models.dit import DiT, DiTConfig

    m = build_method(algo, 11, block_size=4, loss_dtype=torch.float64)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=m.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=2,
                        dropout=0.0))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net = net.double().eval()
    spec = SamplerSpec("confidence", steps=4, total_length=14, prefix=(1, 2, 3),
                       options=ConfidenceOptions(threshold=0.3, proposal="sample"))
    recorders = [Recorder(), Recorder()]
    stats = [r.counts for r in recorders]
    runs = [block_sample(m, net, spec, 3, 14, prefix=spec.prefix, generator=torch.Generator().manual_seed(7),
                         cache=c, observer=s) for c, s in zip((True, False), recorders)]
    assert torch.equal(runs[0], runs[1]) and (runs[0][:, :3] == torch.tensor([1, 2, 3])).all()
    assert SAMPLERS["confidence"].exact is False
    assert stats[0]["denoiser_calls"] <= 4 * 4 + (1 if algo == "duo_base" else 0) * 4
