"""Block diffusion (algo.block_size) as a setting of MDLM and Duo: the training pass's structure, and
MDLM's block NELBO equal to the exact NLL under an oracle denoiser on a tiny vocabulary."""
from __future__ import annotations

import math

import pytest
import torch
from oracles import all_sequences, random_joint

from duolm.contracts import Capabilities
from duolm.core.methods import build_method
from duolm.models.dit import DiT, DiTConfig


def _net(method, seed=0):
    torch.manual_seed(seed)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=2,
                        dropout=0.0))
    for p in net.parameters():  # the zero-initialised heads would hide every dependence
        torch.nn.init.normal_(p, std=0.3)
    return net.double()


@pytest.mark.parametrize("algo", ["mdlm", "duo_base"])
def test_one_block_is_the_whole_sequence_model(algo):
    """block_size = L: a noisy token sees only its own (the only) block, so the pass over x_t ⊕ x_0
    gives the whole-sequence model's loss exactly."""
    L = 8
    whole = build_method(algo, 11, loss_dtype=torch.float64)
    block = build_method(algo, 11, block_size=L, loss_dtype=torch.float64)
    net = _net(whole)
    x0, t = torch.randint(0, 11, (3, L)), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    a = whole.token_loss(net, x0, t=t, generator=torch.Generator().manual_seed(1))
    b = block.token_loss(net, x0, t=t[:, None], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b.nll, a.nll, rtol=0, atol=1e-10)


@pytest.mark.parametrize("algo", ["mdlm", "duo_base"])
@pytest.mark.parametrize("fused", [True, False])
def test_a_block_sees_only_earlier_clean_blocks(algo, fused):
    """Changing block 2's tokens leaves blocks 0 and 1's losses unchanged; changing block 0 changes
    block 2's (it reads the clean block 0). The fused and plain losses agree."""
    m = build_method(algo, 11, block_size=4, loss_dtype=torch.float64, fused=fused)
    net = _net(m)
    x0, t = torch.randint(0, 10, (2, 12)), torch.tensor([[0.3, 0.6, 0.8], [0.7, 0.2, 0.5]], dtype=torch.float64)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731  (the same x_t draws every call)
    base = m.token_loss(net, x0, t=t, generator=g()).nll
    later = x0.clone()
    later[:, 8:] = (later[:, 8:] + 1) % 10
    torch.testing.assert_close(m.token_loss(net, later, t=t, generator=g()).nll[:, :8], base[:, :8], rtol=0, atol=0)
    earlier = x0.clone()
    earlier[:, :4] = (earlier[:, :4] + 1) % 10
    assert (m.token_loss(net, earlier, t=t, generator=g()).nll[:, 8:] - base[:, 8:]).abs().max() > 1e-6
    other = build_method(algo, 11, block_size=4, loss_dtype=torch.float64, fused=not fused)
    torch.testing.assert_close(other.token_loss(net, x0, t=t, generator=g()).nll, base, rtol=0, atol=1e-10)


def test_times_are_drawn_per_block_and_stratified_over_the_global_batch():
    m = build_method("mdlm", 11, block_size=4)
    t = m.sample_times(8, blocks=3, generator=torch.Generator().manual_seed(0))
    assert t.shape == (8, 3)
    strata = ((t - m.sampling_eps) / (1 - m.sampling_eps) * 24).floor().long().reshape(-1)
    assert sorted(strata.tolist()) == list(range(24))  # one draw in each of 8 x 3 strata
    # a batch split in two halves covers the same strata as the whole
    half = [m.sample_times(4, blocks=3, index=torch.arange(4) + 4 * h, total=8,
                           generator=torch.Generator().manual_seed(h)) for h in range(2)]
    strata = ((torch.cat(half) - m.sampling_eps) / (1 - m.sampling_eps) * 24).floor().long().reshape(-1)
    assert sorted(strata.tolist()) == list(range(24))


def test_a_clipped_range_keeps_the_strata_and_validation_keeps_every_time():
    """algo.clip_min/clip_max (BD3-LM's clipped schedule): the training objective draws each block's
    time in [lo, hi], one per stratum of it; the method's own NELBO (validation, eval) is untouched."""
    from duolm.training.objectives import Nelbo

    m = build_method("mdlm", 11, block_size=4)
    obj = Nelbo(m, time_range=(0.3, 0.8))
    x0 = torch.zeros(8, 12, dtype=torch.long)
    t = obj.sample_times(x0, torch.Generator().manual_seed(0))
    assert t.shape == (8, 3) and (t >= 0.3).all() and (t <= 0.8).all()
    strata = ((t - 0.3) / 0.5 * 24).floor().long().reshape(-1)
    assert sorted(strata.tolist()) == list(range(24))
    plain = Nelbo(m).sample_times(x0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, 0.3 + 0.5 * (plain - m.sampling_eps) / (1 - m.sampling_eps))
    with pytest.raises(ValueError, match="not d3pm"):
        Nelbo(build_method("d3pm", 11), time_range=(0.3, 0.8))


def test_a_clipped_run_trains_on_its_range(tmp_path):
    """The config's clip reaches the objective a run builds (and only the objective)."""
    from duolm.app.config import compose_components
    from duolm.app.training_run import build_objective

    _, parts = compose_components(["algo=mdlm", "algo.block_size=4", "algo.clip_min=0.45", "algo.clip_max=0.55",
                                   "model=tiny", "model.length=16"])
    method = parts.method(11)
    obj = build_objective(parts, method, None)
    t = obj.sample_times(torch.zeros(16, 16, dtype=torch.long), torch.Generator().manual_seed(0))
    assert (t >= 0.45).all() and (t <= 0.55).all()
    assert method.sample_times(16, blocks=4).min() < 0.45  # validation's draws still span [eps, 1]


class BlockOracle:
    """The exact denoiser of a tiny joint distribution, as a backbone of the block training pass: at
    a noisy position of block b, p(x_0^i | the unmasked tokens of block b, the clean blocks < b),
    by enumeration (the mask states carry no information, so no time is needed)."""

    capabilities = Capabilities(attention=("bidirectional", "block_causal"))

    def __init__(self, seqs, probs, block_size, mask_id):
        self.seqs, self.probs, self.bs, self.mask_id = seqs, probs, block_size, mask_id

    def __call__(self, inputs, sigma, attn_mask=None, positions=None, weights=None):
        B, L = inputs.shape[0], self.seqs.shape[1]
        if inputs.shape[1] == L:  # one block: the whole-sequence call, x_t alone
            return self(torch.cat([inputs, inputs], dim=1), sigma)[:, :L]
        L2 = 2 * L
        x_t, x0 = inputs[:, :L], inputs[:, L:]
        K = int(self.seqs.max()) + 1
        out = torch.full((B, L2, self.mask_id + 1), -1e30, dtype=torch.float64)
        j = torch.arange(L)
        for i in range(L):
            b = i // self.bs
            earlier, own = j < b * self.bs, (j // self.bs) == b
            seen = torch.where(earlier, x0, x_t)  # what position i may read: (B, L)
            visible = earlier[None] | (own[None] & (x_t != self.mask_id))
            match = ((self.seqs[None] == seen[:, None]) | ~visible[:, None]).all(-1)  # (B, N)
            w = match * self.probs[None]
            p = torch.zeros(B, K, dtype=torch.float64).index_add_(1, self.seqs[:, i], w)
            out[:, i, :K] = torch.log(p / p.sum(-1, keepdim=True))
        return out


def test_mdlm_block_nelbo_is_the_exact_nll_under_the_oracle():
    """With the exact denoiser, the continuous-time masked NELBO of each block is tight, so the
    block NELBO's expectation over t is -log p(x) for every sequence (K = 3, L = 4, blocks of 2)."""
    K, L, bs = 3, 4, 2
    seqs, probs = all_sequences(K, L), random_joint(K, L, seed=4)
    m = build_method("mdlm", K, block_size=bs, loss_dtype=torch.float64, fused=False)
    oracle = BlockOracle(seqs, probs, bs, m.mask_id)
    g = torch.Generator().manual_seed(0)
    for idx in (int(probs.argmax()), 17, 60):
        x = seqs[idx:idx + 1].expand(2000, L)
        draws = torch.cat([m.sequence_nelbo(oracle, x, generator=g)[0] for _ in range(10)])  # antithetic per call
        mean, se = float(draws.mean()), float(draws.std() / math.sqrt(len(draws)))
        assert abs(mean + math.log(probs[idx])) < 4 * se, (idx, mean, -math.log(probs[idx]), se)
