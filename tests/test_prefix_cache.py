"""Generation blocks inside a whole-sequence window and Fast-dLLM's approximate cache
(duolm.sampling.confidence block_length, duolm.sampling.prefix_cache).

- block_length with threshold 1 is LLaDA's semi-autoregressive low-confidence remasking, draw for
  draw against the plain per-row, per-block loop of test_confidence_sampler.py; a block opens only once the one
  before it is decoded.
- The approximate cache is exact where it should be: at each block's first step (a full call), and
  for a one-layer network (its keys depend only on tokens that do not change inside a block), so
  there the cached draws equal the cache-free ones. For a deeper network it is not exact (the
  error is measured, not hidden); dual < prefix < no cache in positions processed.
"""
from __future__ import annotations

import pytest
import torch
from said_as import raises_said_as
from test_confidence_sampler import low_confidence_remasking, network

from duolm.core.methods import build_method
from duolm.core.processes import AbsorbingProcess
from duolm.core.schedules import LogLinear
from duolm.models.dit import DiT, DiTConfig
from duolm.sampling import SamplerSpec
from duolm.sampling.confidence import ConfidenceOptions, confidence_sample
from duolm.sampling.generate import sample_batch
from duolm.sampling.observers import Recorder
from duolm.sampling.prefix_cache import ApproximateCache
from duolm.sampling.registry import SamplingModel

K = 5


@pytest.mark.parametrize("steps,block_length", [(4, 4), (6, 4), (8, 3), (3, 12)])
def test_generation_blocks_at_threshold_one_are_llada_semi_ar_remasking(steps, block_length):
    L = 12
    proc = AbsorbingProcess(K)
    den = network(proc, L, seed=steps)
    held = torch.zeros(4, L, dtype=torch.bool)
    held[:, :2] = True
    values = torch.randint(0, K, (4, L), generator=torch.Generator().manual_seed(1))
    x0 = torch.where(held, values, torch.full((4, L), proc.mask_id))
    recorder = Recorder(states=True)
    traj = recorder.states
    x = confidence_sample(den, proc, LogLinear(), (4, L), steps=steps, threshold=1.0, block_length=block_length,
                          fixed=(held, values), observer=recorder)
    assert torch.equal(x, low_confidence_remasking(den, proc.mask_id, x0, steps, block_length))
    for xt in traj:  # a block opens only once every block before it is decoded
        masked = xt == proc.mask_id
        for a in range(0, L, block_length):
            if masked[:, a + block_length:].any():
                later_started = (~masked[:, a + block_length:] & ~held[:, a + block_length:]).any(-1)
                assert not (later_started & masked[:, a:a + block_length].any(-1)).any()


def _mdlm_dit(layers: int, L: int = 12):
    method = build_method("mdlm", K)
    torch.manual_seed(layers)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=layers,
                        n_heads=2, dropout=0.0))
    for p in net.parameters():  # the zero-initialised heads would hide every dependence
        torch.nn.init.normal_(p, std=0.3)
    return method, net.double().eval()


def _partly_decoded(method, L, start, end, seed=0):
    """x_t as inside the block [start, end): everything before decoded, part of the block, the rest masked."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, K, (3, L), generator=g)
    x[:, end:] = method.mask_id
    x[:, start:end] = torch.where(torch.rand(3, end - start, generator=g) < 0.5, x[:, start:end], method.mask_id)
    return x


def _mdlm_hf(layers: int, L: int = 12):
    """model=hf on a tiny random Llama: transformers' cache behind duolm's KVCache."""
    from transformers import LlamaConfig

    from duolm.models.hf_lm import HFLM, HFConfig

    method = build_method("mdlm", K)
    torch.manual_seed(layers)
    base = LlamaConfig(vocab_size=K, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    net = HFLM(HFConfig(vocab_size=method.model_vocab_size, hf_config=base.to_dict(), pretrained="tiny-llama"))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return method, net.double().eval()


@pytest.mark.parametrize("backbone", [_mdlm_dit, _mdlm_hf], ids=["dit", "hf"])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_the_cache_is_exact_at_a_refresh_and_for_one_layer_and_approximate_deeper(mode, backbone):
    L, start, end = 12, 4, 8
    alpha = torch.ones(3)
    errors = {}
    for layers in (1, 2):
        method, net = backbone(layers, L)
        model = SamplingModel.from_method(method, net)
        first = _partly_decoded(method, L, start, end, seed=1)
        first[:, start:start + 2] = method.mask_id
        later = first.clone()
        later[:, start] = 2  # one more token decoded; position start + 1 still masked
        cache = ApproximateCache(method, net, mode)
        torch.testing.assert_close(cache.predict(first, alpha, start, end, refresh=True), model.denoiser(first, alpha),
                                   atol=1e-10, rtol=0)
        got = cache.predict(later, alpha, start, end, refresh=False)[:, start:end]
        exact = model.denoiser(later, alpha)[:, start:end]
        ok = torch.isfinite(exact)
        errors[layers] = float((got[ok] - exact[ok]).abs().max())
    assert errors[1] < 1e-10, errors       # one layer: the first call's keys are the true keys
    assert errors[2] > 1e-4, errors        # deeper: the block's new tokens change the next layer's keys


def test_one_layer_cached_draws_equal_the_cache_free_ones_and_process_fewer_positions():
    L = 16
    method, net = _mdlm_dit(1, L)
    draws, positions = {}, {}
    for cache in ("none", "prefix", "dual"):
        spec = SamplerSpec(predictor="confidence", steps=16, options=ConfidenceOptions(
            threshold=1.0, block_length=4, cache=cache))  # one token per call: four calls per block
        recorder = Recorder()
        st = recorder.counts
        draws[cache] = sample_batch(method, net, spec, 6, L, bos_id=0, generator=torch.Generator().manual_seed(0),
                                    observer=recorder)
        positions[cache] = st.get("query_positions", st["denoiser_calls"] * L)
        assert (draws[cache] != method.mask_id).all()
    assert torch.equal(draws["prefix"], draws["none"]) and torch.equal(draws["dual"], draws["none"])
    assert positions["dual"] < positions["prefix"] < positions["none"], positions


@pytest.mark.parametrize("options,needle", [
    (dict(cache="dual"), "sampling.confidence.cache reuses keys inside a generation block: set "
                         "sampling.confidence.block_length too"),
    (dict(cache="triple", block_length=4), "sampling.confidence.cache must be one of ['none', 'prefix', 'dual']"),
    (dict(block_length=0), "sampling.confidence.block_length must be null or an integer >= 1, got 0"),
])
def test_bad_cache_settings_are_one_sentence(options, needle):
    with raises_said_as("^" + needle.replace("[", r"\[").replace("]", r"\]")):
        ConfidenceOptions(**options)


def test_where_the_cache_and_blocks_do_not_apply_is_one_sentence():
    L = 16
    spec = SamplerSpec(predictor="confidence", steps=8, options=ConfidenceOptions(block_length=4, cache="dual"))
    method = build_method("mdlm", K, block_size=8)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2))
    with pytest.raises(ValueError, match="already samples with its exact cache"):
        sample_batch(method, net, spec, 2, L, bos_id=0)
    duo = build_method("duo_base", K)
    net = DiT(DiTConfig(vocab_size=duo.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2))
    with pytest.raises(ValueError, match="block_length is for masked models"):
        sample_batch(duo, net, spec, 2, L, bos_id=0)
    method, net = _mdlm_dit(1, L)
    few = SamplerSpec(predictor="confidence", steps=2, options=ConfidenceOptions(block_length=4))
    with raises_said_as(r"sampling.steps \(2\) must be at least the number of generation blocks \(4"):
        sample_batch(method, net, few, 2, L, bos_id=0)
