"""Each row holding its own prompt in one batch (prompts of different lengths), for AR and block
sampling as for the whole window: with exact oracles, every row's continuation follows the data's
distribution given its own prompt; a prompt shared by every row draws exactly what the `prefix` path
draws. This is what batches RL's groups of different prompts, accuracy checks and served requests."""
from __future__ import annotations

import pytest
import torch
from oracles import all_sequences, random_joint
from scipy.stats import chisquare
from test_block_sampling import BS, JOINT, CachedOracle, K, L

from duolm.contracts import Capabilities
from duolm.core.methods import build_method
from duolm.core.schedules import LogLinear
from duolm.sampling import SamplerSpec
from duolm.sampling.ar import ar_sample
from duolm.sampling.blocks import block_sample
from duolm.sampling.generate import is_prefix_hold
from duolm.sampling.semi_ar import held_positions

SEQS = all_sequences(K, L)
BOS = K  # the AR oracle's start token


def _rows(prompts: list[list[int]], n: int, length: int):
    """(mask, values) holding prompt p in rows p * n .. p * n + n - 1."""
    mask = torch.zeros(len(prompts) * n, length, dtype=torch.bool)
    values = torch.zeros(len(prompts) * n, length, dtype=torch.long)
    for p, ids in enumerate(prompts):
        mask[p * n:(p + 1) * n, :len(ids)] = True
        values[p * n:(p + 1) * n, :len(ids)] = torch.tensor(ids)
    return mask, values


def _conditional(prefix: list[int], joint=JOINT) -> tuple[torch.Tensor, torch.Tensor]:
    """The data's sequences that start with prefix, and their probabilities given it."""
    keep = (SEQS[:, :len(prefix)] == torch.tensor(prefix)).all(-1)
    return SEQS[keep], joint[keep] / joint[keep].sum()


def _counts(samples: torch.Tensor, prefix: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the samples' counts, the data's probabilities) over the sequences that continue prefix."""
    seqs, probs = _conditional(prefix)
    index = {tuple(s.tolist()): i for i, s in enumerate(seqs)}
    assert all(tuple(s.tolist()) in index for s in samples), "a sample does not continue its prompt"
    counts = torch.zeros(len(seqs), dtype=torch.float64)
    for s in samples:
        counts[index[tuple(s.tolist())]] += 1
    return counts, probs


def _fits(samples: torch.Tensor, prefix: list[int]) -> float:
    """Chi-square p-value of the samples' whole sequences against the data given their prefix."""
    counts, probs = _counts(samples, prefix)
    return chisquare(counts.numpy(), (probs * len(samples)).numpy()).pvalue


def _tv(samples: torch.Tensor, prefix: list[int]) -> float:
    counts, probs = _counts(samples, prefix)
    return 0.5 * float((counts / len(samples) - probs).abs().sum())


class AROracle:
    """A causal 'network' over [BOS] + the data's sequences: at each position the exact next-token
    log-probabilities under JOINT given the tokens so far (no cache: every call reads the whole prefix)."""

    capabilities = Capabilities(attention=("causal",), kv_cache=False)

    def __call__(self, x, *args, **kwargs):
        B, S = x.shape
        out = torch.full((B, S, K + 1), -1e30, dtype=torch.float64)
        for j in range(S):
            if j >= L:
                continue
            seen = x[:, 1:j + 1]  # the tokens after BOS up to position j
            match = (SEQS[None, :, :j] == seen[:, None]).all(-1) * JOINT[None]  # (B, N)
            p = torch.zeros(B, K, dtype=torch.float64).index_add_(1, SEQS[:, j], match)
            out[:, j, :K] = torch.log(p / p.sum(-1, keepdim=True))
        return out


def test_ar_rows_follow_their_own_prompts():
    """One AR batch of three prompts of lengths 1, 2 and 4 tokens (with BOS): each group's sequences
    follow the data given its own prompt (chi-square), and the held tokens are held."""
    n = 3000
    prompts = [[BOS], [BOS, 1], [BOS, 2, 0, 1]]
    fixed = _rows(prompts, n, L + 1)
    x = ar_sample(AROracle(), 3 * n, L + 1, BOS, generator=torch.Generator().manual_seed(0), use_cache=False,
                  vocab_size=K, fixed=fixed)
    for p, ids in enumerate(prompts):
        rows = x[p * n:(p + 1) * n]
        assert (rows[:, :len(ids)] == torch.tensor(ids)).all()
        assert _fits(rows[:, 1:], ids[1:]) > 1e-3, ids


def test_ar_held_prefix_draws_what_the_prompt_path_draws():
    a = ar_sample(AROracle(), 5, L + 1, BOS, generator=torch.Generator().manual_seed(3), use_cache=False,
                  vocab_size=K, prompt=[BOS, 1])
    b = ar_sample(AROracle(), 5, L + 1, BOS, generator=torch.Generator().manual_seed(3), use_cache=False,
                  vocab_size=K, fixed=held_positions(5, L + 1, [BOS, 1]))
    assert torch.equal(a, b)


@pytest.mark.parametrize("algo,prompts", [("mdlm", [[1], [2, 0, 1]]), ("duo_base", [[], [2, 0]])])
def test_block_rows_follow_their_own_prompts(algo, prompts):
    """One block batch (blocks of 2) of prompts of different lengths (MDLM: 1 and 3 tokens, the second
    crossing the first block; Duo: none and a whole block, as the oracle reads a uniform-state block's
    tokens as noisy, so a token held inside a block would fool it, not the sampler): each group's
    sequences are within twice the TV that n = 4000 exact draws show (plus 0.01: finite steps draw a
    block's two tokens together now and then) of the data given its own prompt at 64 steps per block,
    and the unprompted rows do not follow the other group's prompt."""
    n = 4000
    m = build_method(algo, K, block_size=BS, schedule=LogLinear(eps=0.0), loss_dtype=torch.float64)
    net = CachedOracle(m.process, SEQS, JOINT)
    spec = SamplerSpec("ancestral", steps=64, noise_removal="ancestral", eps=1e-4)
    x = block_sample(m, net, spec, 2 * n, L, generator=torch.Generator().manual_seed(1), device="cpu",
                     fixed=_rows(prompts, n, L))
    for p, ids in enumerate(prompts):
        rows = x[p * n:(p + 1) * n]
        _, probs = _conditional(ids)
        noise = 0.4 * float(probs.sqrt().sum()) / n ** 0.5  # E[TV] of n exact draws, about
        assert _tv(rows, ids) < 2 * noise + 0.01, (ids, _tv(rows, ids), noise)
    unconditioned = x[:n] if not prompts[0] else None
    if unconditioned is not None:  # the rows without a prompt do not follow the other group's
        assert (unconditioned[:, :2] != torch.tensor(prompts[1])).any(-1).float().mean() > 0.5


def test_block_held_prefix_draws_what_the_prefix_path_draws():
    m = build_method("duo_base", K, block_size=BS, schedule=LogLinear(eps=0.0), loss_dtype=torch.float64)
    net = CachedOracle(m.process, SEQS, JOINT)
    spec = SamplerSpec("ancestral", steps=4)
    a = block_sample(m, net, spec, 6, L, prefix=[2, 0, 1], generator=torch.Generator().manual_seed(2), device="cpu")
    b = block_sample(m, net, spec, 6, L, fixed=held_positions(6, L, [2, 0, 1]),
                     generator=torch.Generator().manual_seed(2), device="cpu")
    assert torch.equal(a, b)


def test_a_prefix_hold_is_told_from_a_template():
    assert is_prefix_hold(torch.tensor([[True, True, False], [True, False, False], [False, False, False]]))
    assert not is_prefix_hold(torch.tensor([[True, False, True]]))


def test_random_joint_is_a_distribution():  # the oracles' input, checked once here
    j = random_joint(K, L, seed=5)
    assert torch.allclose(j.sum(), torch.tensor(1.0, dtype=torch.float64)) and torch.equal(j, JOINT)
