"""Block-by-block sampling with the KV cache: exact against the cache-free pass draw for draw, and,
with an exact denoiser on a tiny vocabulary, the data distribution reproduced for MDLM and Duo."""
from __future__ import annotations

import pytest
import torch
from oracles import all_sequences, random_joint
from scipy.stats import chisquare

from duolm.contracts import Capabilities
from duolm.core.methods import build_method
from duolm.core.schedules import LogLinear
from duolm.models.dit import DiT, DiTConfig
from duolm.sampling import Kappa, KappaSchedule, PsiOptions, SamplerSpec
from duolm.sampling.blocks import block_sample
from duolm.sampling.generate import sample_batch
from duolm.sampling.observers import Recorder

K, L, BS = 3, 4, 2


def _dit(method):
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=2,
                        dropout=0.0))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net.double().eval()


@pytest.mark.parametrize("algo,predictor", [("mdlm", "ancestral"), ("mdlm", "ancestral_cache"),
                                            ("duo_base", "ancestral"), ("duo_base", "psi")])
def test_cached_sampling_equals_the_cache_free_pass_draw_for_draw(algo, predictor):
    m = build_method(algo, 11, block_size=4, loss_dtype=torch.float64)
    net = _dit(m)
    spec = SamplerSpec(predictor, steps=6, total_length=18, prefix=(1, 2, 3, 4, 5))
    runs = [block_sample(m, net, spec, 3, 18, prefix=spec.prefix, generator=torch.Generator().manual_seed(7),
                         cache=c) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (3, 18) and (runs[0][:, :5] == torch.tensor([1, 2, 3, 4, 5])).all()


def test_block_models_sample_through_sample_batch_and_stop_at_eos():
    m = build_method("mdlm", 11, block_size=4)
    net = _dit(m).float()
    recorder = Recorder()
    st = recorder.counts
    x = sample_batch(m, net, SamplerSpec("ancestral", steps=4, total_length=40), 2, 16, bos_id=10,
                     generator=torch.Generator().manual_seed(0), observer=recorder)
    assert x.shape == (2, 40) and st["blocks"] == 10 and st["commit_calls"] == 10
    assert st["denoiser_calls"] == 10 * 5  # 4 steps and the greedy tail per block
    # an EOS everywhere after the first block: stop there, EOS after it
    eos = 3
    spec = SamplerSpec("ancestral", steps=4, total_length=40, prefix=(0, 1, 2, eos, 5), stop_at_eos=True)
    y = block_sample(m, net, spec, 2, 40, prefix=spec.prefix, eos_id=eos, generator=torch.Generator().manual_seed(0))
    assert y.shape[1] == 8 and (y[:, 4:] == eos).all()
    with pytest.raises(ValueError, match="this one is unconditional"):
        block_sample(m, net, spec, 2, 8, guidance=2.0)


@pytest.mark.parametrize("algo", ["mdlm", "duo_base"])
def test_guided_block_sampling_keeps_a_cache_per_model_and_equals_the_cache_free_pass(algo):
    """Classifier-free guidance inside blocks: the conditional and the unconditional (null label)
    model each read their own cache; cached equals cache-free draw for draw, guidance 0 is the
    unconditional model and guidance 1 the conditional one."""
    m = build_method(algo, 11, block_size=4, loss_dtype=torch.float64)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=m.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=2,
                        dropout=0.0, num_classes=3))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    net = net.double().eval()
    labels = torch.tensor([0, 1, 2])
    spec = SamplerSpec("ancestral", steps=5, total_length=12)

    def run(w, cache=True, lab=labels):
        return block_sample(m, net, spec, 3, 12, labels=lab, guidance=w, cache=cache,
                            generator=torch.Generator().manual_seed(4))

    assert torch.equal(run(2.5), run(2.5, cache=False))
    assert not torch.equal(run(2.5), run(1.0))
    assert torch.equal(run(0.0), run(1.0, lab=torch.full((3,), 3)))  # the null label: unconditional
    recorder = Recorder()
    st = recorder.counts
    block_sample(m, net, spec, 3, 12, labels=labels, guidance=2.5, observer=recorder)
    assert st["commit_calls"] == 2 * 3  # both caches get each of the 3 blocks


class CachedOracle:
    """The exact denoiser of a joint over K**L sequences as a cached backbone: the committed blocks
    are its cache; a noisy block's position i gets log p(x_0^i | committed, the block's other
    tokens) under the process (its own token too for the absorbing process, whose unmasked tokens
    are exact), at the level sigma = -log alpha."""

    capabilities = Capabilities(attention=("bidirectional", "block_causal"), kv_cache=True, time_conditioning=True)

    def __init__(self, process, seqs, probs):
        self.process, self.seqs, self.probs = process, seqs, probs

    def new_cache(self):
        return []  # the committed blocks themselves (this oracle reads tokens, not keys)

    def __call__(self, x, sigma, weights=None, cache=None, position_offset=0, class_cond=None, store_kv=True):
        store = cache
        B, S = x.shape
        out = torch.full((B, S, self.process.num_states), -1e30, dtype=torch.float64)
        if store_kv:
            store.append(x.clone())
            return out
        prefix = torch.cat(store, 1) if store else torch.zeros(B, 0, dtype=torch.long)
        assert prefix.shape[1] == position_offset
        alpha = torch.exp(-sigma.double()).reshape(B, 1) if self.process.kind == "uniform" else None
        match = (self.seqs[None, :, :position_offset] == prefix[:, None]).all(-1)  # (B, N)
        base = match * self.probs[None]
        # q(x_t^j | x_0^j = seq) for the block's positions: (B, N, S)
        block = self.seqs[:, position_offset:position_offset + S]
        if self.process.kind == "uniform":
            lik = torch.where(block[None] == x[:, None], alpha[..., None] + (1 - alpha[..., None]) / K,
                              (1 - alpha[..., None]) / K)
        else:
            mask = self.process.mask_id
            lik = ((block[None] == x[:, None]) | (x[:, None] == mask)).double()
        for i in range(S):
            others = torch.cat([lik[..., :i], lik[..., i + 1:]], -1).prod(-1) if self.process.kind == "uniform" \
                else lik.prod(-1)
            w = base * others
            p = torch.zeros(B, K, dtype=torch.float64).index_add_(1, block[:, i], w)
            out[:, i, :K] = torch.log(p / p.sum(-1, keepdim=True))
        return out


def _oracle_samples(algo, predictor, steps, n, seed, options=None):
    m = build_method(algo, K, block_size=BS, schedule=LogLinear(eps=0.0), loss_dtype=torch.float64)
    net = CachedOracle(m.process, all_sequences(K, L), JOINT)
    spec = SamplerSpec(predictor, steps=steps, noise_removal="ancestral", eps=1e-4, options=options)
    return block_sample(m, net, spec, n, L, generator=torch.Generator().manual_seed(seed), device="cpu")


JOINT = random_joint(K, L, seed=5)
PSI = PsiOptions(kappa=KappaSchedule(Kappa("constant", 0.5), Kappa("constant", 0.5), Kappa("constant", 0.5)))


def _index(x, cols):
    return sum(x[:, c] * K ** (len(cols) - 1 - i) for i, c in enumerate(cols))


def _counts(x, cols):
    return torch.bincount(_index(x, cols), minlength=K ** len(cols)).double()


def _marginal(cols):
    """The data's distribution of the tokens at cols, by summing the joint."""
    return torch.zeros(K ** len(cols), dtype=torch.float64).index_add_(0, _index(all_sequences(K, L), cols), JOINT)


@pytest.mark.parametrize("algo,predictor,options", [("mdlm", "ancestral", None), ("duo_base", "ancestral", None),
                                                    ("duo_base", "psi", PSI)])
def test_block_samplers_reproduce_the_data_with_an_oracle(algo, predictor, options):
    """One-token marginals of the first block are exact at one step per block; with 64 steps per block
    the pair across the block boundary (positions 1, 2) matches the data by chi-square, and the whole
    joint of 81 sequences is within TV 0.06 (n = 6000)."""
    n = 6000
    one = _oracle_samples(algo, predictor, 1, n, seed=1, options=options)
    for c in (0, 1):
        assert chisquare(_counts(one, [c]).numpy(), (_marginal([c]) * n).numpy()).pvalue > 1e-3, c
    many = _oracle_samples(algo, predictor, 64, n, seed=2, options=options)
    assert chisquare(_counts(many, [1, 2]).numpy(), (_marginal([1, 2]) * n).numpy()).pvalue > 1e-3
    tv = 0.5 * (_counts(many, [0, 1, 2, 3]) / n - JOINT).abs().sum().item()
    tv1 = 0.5 * (_counts(one, [0, 1, 2, 3]) / n - JOINT).abs().sum().item()
    assert tv < 0.06 < tv1 or (tv < 0.06 and tv1 > 1.5 * tv), (tv, tv1)  # n = 6000 over 81 states: noise ~ 0.04
