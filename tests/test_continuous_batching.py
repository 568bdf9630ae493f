"""Continuous batching (duolm.sampling.continuous): rows join a running batch and leave it at block
(AR: token) boundaries, each with its own start in a left-padded cache. A row's logits equal its
logits alone (float64, 1e-10); under deterministic decoding a row's tokens equal the same prompt
sampled alone by block_sample, whoever else comes and goes; with AR, rows that joined at different
steps follow the model's exact distribution (enumerated on a tiny vocabulary)."""
from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from duolm.contracts import CapabilityError
from duolm.core.methods import build_method
from duolm.models.dit import DiT, DiTConfig
from duolm.sampling import SamplerSpec
from duolm.sampling.blocks import block_sample, commit_block
from duolm.sampling.confidence import ConfidenceOptions
from duolm.sampling.continuous import ContinuousBatch

VOCAB, BS, EOS, BOS = 11, 4, 9, 10


def _dit(method, causal=False):
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=2,
                        dropout=0.0, causal=causal))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net.double().eval()


def test_a_ragged_cache_gives_each_row_its_logits_alone():
    """Three prompts of 4, 8 and 12 tokens read into one cache in one call per block (left padding),
    then a noisy block at the common end: each row's logits equal the row alone with a plain cache."""
    m = build_method("mdlm", VOCAB, block_size=BS, loss_dtype=torch.float64)
    net = _dit(m)
    prompts = [[(3 * i + 1) % VOCAB for i in range(n)] for n in (4, 8, 12)]
    batch = ContinuousBatch(m, net, SamplerSpec("ancestral", steps=2), bos_id=BOS, eos_id=EOS)
    batch.join([(i, p, 40) for i, p in enumerate(prompts)])
    assert batch.cache.starts.tolist() == [8, 4, 0] and len(batch.cache) == 12
    noisy = torch.randint(0, VOCAB + 1, (3, BS), generator=torch.Generator().manual_seed(1))
    sigma = torch.full((3,), 0.7, dtype=torch.float64)
    together = net(noisy, sigma, cache=batch.cache, position_offset=12, store_kv=False)
    for i, p in enumerate(prompts):
        alone = net.new_cache()
        for offset in range(0, len(p), BS):
            commit_block(net, alone, torch.tensor([p[offset:offset + BS]]), offset)
        want = net(noisy[i:i + 1], sigma[:1], cache=alone, position_offset=len(p), store_kv=False)
        torch.testing.assert_close(together[i:i + 1], want, rtol=0, atol=1e-10)


def test_ar_rows_of_different_lengths_read_their_own_positions():
    m = build_method("ar", VOCAB)
    net = _dit(m, causal=True)
    prompts = [[BOS, 3], [BOS, 1, 2, 5, 6], [BOS]]
    batch = ContinuousBatch(m, net, SamplerSpec("ar"), bos_id=BOS, eos_id=EOS)
    batch.join([(i, p, 20) for i, p in enumerate(prompts)])
    last = torch.tensor([[p[-1]] for p in prompts])
    together = net(last, cache=batch.cache, position_offset=len(batch.cache), store_kv=False)
    for i, p in enumerate(prompts):
        want = net(torch.tensor([p]))[:, -1:]
        torch.testing.assert_close(together[i:i + 1], want, rtol=0, atol=1e-10)


def _run(batch, arrivals: dict, steps: int) -> tuple[dict, list[int]]:
    """Step a batch `steps` times, rows joining at the steps `arrivals` names; (each key's new tokens,
    the batch's size at each step after the joins)."""
    got, sizes = {}, []
    for step in range(steps):
        batch.join(arrivals.get(step, []))
        sizes.append(len(batch))
        for u in batch.step():
            got.setdefault(u.key, []).extend(u.tokens)
    return got, sizes


def _own_streams(arrivals: dict) -> dict:
    """(key, prompt, limit, seed) arrivals as rows with their own generators, seeded."""
    return {step: [(k, p, lim, torch.Generator().manual_seed(seed)) for k, p, lim, seed in rows]
            for step, rows in arrivals.items()}


def _greedy(steps=4):
    return SamplerSpec("confidence", steps=steps, options=ConfidenceOptions(threshold=1.0, min_per_step=1))


def _alone(m, net, spec, prompt, limit):
    """The prompt sampled by itself, block by block, as far as the row would go."""
    total = -(-limit // BS) * BS
    out = block_sample(m, net, replace_prefix(spec, prompt), 1, total, prefix=prompt, eos_id=EOS)
    return out[0].tolist()


def replace_prefix(spec, prompt):
    from dataclasses import replace

    return replace(spec, prefix=tuple(prompt), stop_at_eos=False)


def test_rows_that_join_and_leave_get_what_they_would_alone():
    """Deterministic decoding (MDLM: an all-mask prior, confidence with the greedy proposal): rows joining at steps 0, 1 and 3 with prompts of 3, 6 and 9 tokens (a
    partial block held inside the first sampled block) and limits of 8 to 24 tokens; each row leaves
    at its limit and its tokens equal its prompt sampled alone (EOS is a token like another here)."""
    m = build_method("mdlm", VOCAB, block_size=BS, loss_dtype=torch.float64)
    net = _dit(m)
    spec = _greedy()
    arrivals = {0: [("a", [BOS, 1, 2], 12), ("b", [BOS, 3, 4, 5, 6, 7], 20)],
                1: [("c", [BOS, 8, 1, 2, 3, 4, 5, 6, 7], 24)], 3: [("d", [BOS, 2], 8), ("e", [BOS, 2], 16)]}
    batch = ContinuousBatch(m, net, spec, bos_id=BOS, eos_id=None)
    got, sizes = _run(batch, arrivals, 12)
    assert len(batch) == 0 and sizes[:5] == [2, 3, 3, 4, 3] and sizes[-1] == 0  # rows left as they finished
    for rows in arrivals.values():
        for key, prompt, limit in rows:
            want = _alone(m, net, spec, prompt, limit)
            assert prompt + got[key] == want, key
            assert len(prompt) + len(got[key]) == -(-limit // BS) * BS


@pytest.mark.parametrize("algo,predictor", [("duo_base", "ancestral"), ("duo_base", "psi"), ("mdlm", "ancestral")])
def test_one_row_draws_what_block_sample_draws(algo, predictor):
    """Random draws (Duo's prior is random tokens): a row alone in the batch takes the same draws from
    the same generator as block_sample, so its tokens are equal."""
    m = build_method(algo, VOCAB, block_size=BS, loss_dtype=torch.float64)
    net = _dit(m)
    spec = SamplerSpec(predictor, steps=5)
    prompt = [BOS, 3, 4, 5, 6, 2]
    batch = ContinuousBatch(m, net, spec, bos_id=BOS, eos_id=None, generator=torch.Generator().manual_seed(4))
    batch.join([("r", prompt, 20)])
    got = []
    while batch:
        got += batch.step()[0].tokens
    want = block_sample(m, net, replace_prefix(spec, prompt), 1, 20, prefix=prompt,
                        generator=torch.Generator().manual_seed(4))
    assert prompt + got == want[0].tolist()


def test_a_row_leaves_at_its_eos_and_a_dropped_row_is_gone():
    m = build_method("mdlm", VOCAB, block_size=BS, loss_dtype=torch.float64)
    net = _dit(m)
    alone = _alone(m, net, _greedy(), [BOS, 1, 2], 40)
    eos = next(t for t in alone[3:])  # whatever the first generated token is, call it EOS
    batch = ContinuousBatch(m, net, _greedy(), bos_id=BOS, eos_id=eos)
    batch.join([("x", [BOS, 1, 2], 40), ("y", [BOS, 5], 40), ("z", [BOS, 6], 40)])
    first = {u.key: u for u in batch.step()}
    assert first["x"].done and first["x"].tokens[0] == eos and "x" not in batch.keys
    batch.drop(["y", "unknown"])
    assert batch.keys == [k for k in ("z",) if not first["z"].done]
    assert batch.cache.starts is None or len(batch.cache.starts) == len(batch)


def test_ar_rows_joining_at_different_steps_follow_the_models_distribution():
    """A 4-token vocabulary (its last token the BOS), 3 new tokens per row: 3,000 rows joining at steps 0, 1 and 2 of
    one running batch; each prompt's continuations against their exact probabilities under the model
    (enumerated with plain forward passes)."""
    m = build_method("ar", 4)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=m.model_vocab_size, hidden_size=16, cond_dim=8, n_blocks=1, n_heads=2,
                        dropout=0.0, causal=True))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.5)
    net = net.double().eval()
    bos = 3
    prompts = {0: [bos], 1: [bos, 2], 2: [bos, 1, 0]}
    g = torch.Generator().manual_seed(3)
    batch = ContinuousBatch(m, net, SamplerSpec("ar"), bos_id=bos, eos_id=None, generator=g)
    arrivals = {step: [((step, r), p, len(p) + 3) for r in range(1000)] for step, p in prompts.items()}
    got, _ = _run(batch, arrivals, 6)
    assert len(batch) == 0
    for step, prompt in prompts.items():
        conts = list(itertools.product(range(m.vocab_size), repeat=3))
        probs = []
        for c in conts:
            x = torch.tensor([prompt + list(c)])
            with torch.no_grad():
                logp = net(x).double()[0, :, :m.vocab_size].log_softmax(-1)
            probs.append(float(sum(logp[len(prompt) - 1 + j, c[j]] for j in range(3)).exp()))
        probs = torch.tensor(probs, dtype=torch.float64)
        assert abs(float(probs.sum()) - 1) < 1e-9
        counts = torch.zeros(len(conts))
        for r in range(1000):
            counts[conts.index(tuple(got[(step, r)]))] += 1
        assert chisquare(counts.numpy(), (probs * 1000).numpy()).pvalue > 1e-4


def test_whole_window_models_and_backbones_without_ragged_rows_are_refused():
    m = build_method("mdlm", VOCAB)
    with pytest.raises(ValueError, match="block model"):
        ContinuousBatch(m, _dit(m), _greedy(), bos_id=BOS, eos_id=EOS)

    class Plain(DiT):
        @property
        def capabilities(self):
            return super().capabilities.changed(ragged_rows=False)

    mb = build_method("mdlm", VOCAB, block_size=BS)
    net = Plain(DiTConfig(vocab_size=mb.model_vocab_size, hidden_size=16, cond_dim=8, n_blocks=1, n_heads=2))
    with pytest.raises(CapabilityError, match="ragged_rows"):
        ContinuousBatch(mb, net, _greedy(), bos_id=BOS, eos_id=EOS)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("algo", ["ar", "mdlm"])
def test_a_pretrained_backbone_batches_continuously_too(kind, algo):
    """model=hf (transformers' own networks, rotary or learned positions): a cache of left-padded rows
    gives each row its logits alone (float64), so its AR and block models batch continuously."""
    from test_hf_backbone import _wrapped

    block = None if algo == "ar" else BS
    m = build_method(algo, 40, block_size=block, loss_dtype=torch.float64)
    net, _ = _wrapped(kind, m.model_vocab_size, **({"causal": True} if algo == "ar" else {}))
    net = net.double()
    assert net.capabilities.ragged_rows
    spec = SamplerSpec("ar") if algo == "ar" else SamplerSpec("ancestral", steps=2)
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18, 19, 20, 21, 22, 23]]
    batch = ContinuousBatch(m, net, spec, bos_id=0, eos_id=None)
    batch.join([(i, p, 30) for i, p in enumerate(prompts)])
    slot = len(batch.cache)
    if algo == "ar":
        x = torch.tensor([[p[-1]] for p in prompts])
        together = net(x, cache=batch.cache, position_offset=slot, store_kv=False)
    else:
        x = torch.randint(0, 40, (3, BS), generator=torch.Generator().manual_seed(1))
        together = net(x, torch.full((3,), 0.5, dtype=torch.float64), cache=batch.cache, position_offset=slot,
                       store_kv=False)
    for i, p in enumerate(prompts):
        alone = net.new_cache()
        if algo == "ar":
            net(torch.tensor([p[:-1]]), cache=alone, store_kv=True)
            want = net(x[i:i + 1], cache=alone, position_offset=len(p) - 1, store_kv=False)
        else:
            full = len(p) // BS * BS
            for offset in range(0, full, BS):
                commit_block(net, alone, torch.tensor([p[offset:offset + BS]]), offset)
            want = net(x[i:i + 1], torch.full((1,), 0.5, dtype=torch.float64), cache=alone, position_offset=full,
                       store_kv=False)
        torch.testing.assert_close(together[i:i + 1], want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("algo,predictor", [("mdlm", "ancestral"), ("mdlm", "ancestral_cache"),
                                            ("duo_base", "ancestral"), ("duo_base", "psi"), ("mdlm", "confidence")])
def test_rows_with_their_own_streams_draw_what_they_draw_alone(algo, predictor):
    """Random samplers, rows with their own generators (row_streams): rows joining at steps 0, 1 and 3,
    prompts of 3 to 9 tokens, limits of 8 to 24; each row's tokens equal block_sample of its prompt
    alone with a generator seeded the same, draw for draw, whoever shares its batch."""
    from duolm.sampling import Kappa, KappaSchedule
    from duolm.sampling.psi import PsiOptions

    m = build_method(algo, VOCAB, block_size=BS, loss_dtype=torch.float64)
    net = _dit(m)
    half = Kappa("constant", 0.5)  # half posterior, half predictor-corrector: every draw site of a step
    options = {"psi": PsiOptions(kappa=KappaSchedule(half, half, half)),
               "confidence": ConfidenceOptions(threshold=0.3, proposal="sample")}.get(predictor)
    spec = SamplerSpec(predictor, steps=5, options=options)
    arrivals = {0: [("a", [BOS, 1, 2], 12, 11), ("b", [BOS, 3, 4, 5, 6, 7], 20, 12)],
                1: [("c", [BOS, 8, 1, 2, 3, 4, 5, 6, 7], 24, 13)], 3: [("d", [BOS, 2], 8, 14), ("e", [BOS, 2], 16, 15)]}
    batch = ContinuousBatch(m, net, spec, bos_id=BOS, eos_id=None, row_streams=True,
                            generator=torch.Generator().manual_seed(0))
    got, _ = _run(batch, _own_streams(arrivals), 12)
    for rows in arrivals.values():
        for key, prompt, limit, seed in rows:
            total = -(-limit // BS) * BS
            want = block_sample(m, net, replace_prefix(spec, prompt), 1, total, prefix=prompt,
                                generator=torch.Generator().manual_seed(seed))
            assert prompt + got[key] == want[0].tolist(), key


def test_ar_rows_with_their_own_streams_draw_what_they_draw_alone():
    from duolm.sampling.ar import ar_sample

    m = build_method("ar", VOCAB)
    net = _dit(m, causal=True)
    arrivals = {0: [("a", [BOS, 1, 2], 12, 21)], 2: [("b", [BOS], 9, 22), ("c", [BOS, 4, 4, 4, 4], 14, 23)]}
    batch = ContinuousBatch(m, net, SamplerSpec("ar"), bos_id=BOS, eos_id=None, row_streams=True)
    got, _ = _run(batch, _own_streams(arrivals), 16)
    for rows in arrivals.values():
        for key, prompt, limit, seed in rows:
            want = ar_sample(net, 1, limit, BOS, prompt=prompt, vocab_size=m.vocab_size,
                             generator=torch.Generator().manual_seed(seed))
            assert prompt + got[key] == want[0].tolist(), key


def test_row_streams_are_refused_for_samplers_that_draw_for_finished_rows():
    m = build_method("duo_base", VOCAB, block_size=BS)  # confidence's uniform-state steps draw for every row
    with pytest.raises(ValueError, match="cannot draw each row of a duo_base model from its own generator"):
        ContinuousBatch(m, _dit(m), _greedy(), bos_id=BOS, eos_id=EOS, row_streams=True)
