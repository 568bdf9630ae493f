"""Every row of the backbone table through duolm.contracts.Backbone: one forward signature, and each
capability a network declares does what it says, while each one it does not declare is refused in
one sentence (CapabilityError) or, for the noise level, ignored.

The networks: the DiT (bidirectional, causal, class-conditional), the UNet, and model=hf on tiny
random Llama, GPT-2 and Qwen2 bases (causal too, and annealing). Float64 throughout, so "equal" is
1e-10: cached == cache-free, soft one-hot inputs == ids, the head == the logits.
"""
from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from duolm.contracts import Backbone, Capabilities, CapabilityError, KVCache
from duolm.core.block_attention import block_causal_mask
from duolm.models.backbones import BACKBONES, checked
from duolm.models.dit import DiT, DiTConfig
from duolm.models.unet import UNet, UNetConfig

V = 24


def _jiggled(net):
    """Zero-initialised layers (adaLN, the output) made nonzero, so every input can move the output."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    # the UNet computes in float32 (its pixel levels are read as floats); the transformers in float64
    return (net if isinstance(net, UNet) else net.double()).eval()


def _hf(kind: str, **kw):
    from test_hf_backbone import _wrapped

    net, _ = _wrapped(kind, V, **kw)
    return net


CASES = {
    "dit": lambda: DiT(DiTConfig(vocab_size=V, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=4, dropout=0.0)),
    "dit-causal": lambda: DiT(DiTConfig(vocab_size=V, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=4,
                                        dropout=0.0, causal=True)),
    "dit-classes": lambda: DiT(DiTConfig(vocab_size=V, hidden_size=32, cond_dim=16, n_blocks=2, n_heads=4,
                                         dropout=0.0, num_classes=3)),
    "unet": lambda: UNet(UNetConfig(vocab_size=17, channels=1, image_size=8, ch=8, num_res_blocks=1, ch_mult=[1, 2],
                                    attn_scale=1, time_embed_dim=8, dropout=0.0, num_classes=0)),
    "unet-classes": lambda: UNet(UNetConfig(vocab_size=17, channels=1, image_size=8, ch=8, num_res_blocks=1,
                                            ch_mult=[1, 2], attn_scale=1, time_embed_dim=8, dropout=0.0,
                                            num_classes=3)),
    "hf-llama": lambda: _hf("llama"),
    "hf-gpt2": lambda: _hf("gpt2"),
    "hf-qwen2": lambda: _hf("qwen2", time_conditioning=True),
    "hf-llama-causal": lambda: _hf("llama", causal=True),
    "hf-llama-annealed": lambda: _hf("llama", anneal_steps=10),
    "hf-gpt2-lora": lambda: _hf("gpt2", lora={"r": 4}),
}
ROW = {name: name.split("-")[0] for name in CASES}


# rows whose decoder reads a prompt from an encoder's cache (no cache-free pass for the cases here):
# their contract is tested in their own file
ENCODER_PREFIX_ROWS = {"diffusion_gemma": "tests/test_diffusion_gemma.py"}


def test_every_row_of_the_table_has_cases():
    assert set(ROW.values()) | set(ENCODER_PREFIX_ROWS) == set(BACKBONES)
    assert all(BACKBONES[r].capabilities.encoder_prefix for r in ENCODER_PREFIX_ROWS)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    torch.manual_seed(0)
    net = _jiggled(CASES[request.param]())
    return request.param, net


def _ids(net, B=2, L=8, seed=1):
    vocab = net.config.vocab_size
    L = 64 if isinstance(net, UNet) else L
    return torch.randint(0, vocab - 1, (B, L), generator=torch.Generator().manual_seed(seed))


def _sigma(B, value=0.5):
    return torch.full((B,), value, dtype=torch.float64)


def test_the_network_implements_the_protocol_within_its_row(case):
    name, net = case
    assert isinstance(net, Backbone)
    assert checked(net, ROW[name]) is net
    assert net.capabilities.within(BACKBONES[ROW[name]].capabilities) == []
    protocol = list(inspect.signature(Backbone.forward).parameters.values())[1:]
    own = list(inspect.signature(net.forward).parameters.values())
    assert [(p.name, p.kind, p.default) for p in own] == [(p.name, p.kind, p.default) for p in protocol], name
    assert net.num_parameters(exclude_embeddings=True) <= net.num_parameters()


class ClaimsACache(UNet):
    @property
    def capabilities(self) -> Capabilities:
        return replace(super().capabilities, kv_cache=True)


def test_a_network_claiming_more_than_its_row_is_refused():
    config = CASES["unet"]().config
    assert checked(UNet(config), "unet")
    with pytest.raises(TypeError, match="claims kv_cache beyond its BACKBONES row"):
        checked(ClaimsACache(config), "unet")
    with pytest.raises(TypeError, match="does not implement duolm.contracts.Backbone"):
        checked(torch.nn.Linear(2, 2), "unet")


def test_logits_have_one_row_per_position_and_state(case):
    _, net = case
    x = _ids(net)
    with torch.no_grad():
        out = net(x, _sigma(2))
    assert out.shape == (*x.shape, net.config.vocab_size) and torch.isfinite(out).all()


def test_the_noise_level_moves_the_output_exactly_where_declared(case):
    _, net = case
    x = _ids(net)
    with torch.no_grad():
        moved = (net(x, _sigma(2, 0.1)) - net(x, _sigma(2, 2.0))).abs().max()
    assert (moved > 1e-8) == net.capabilities.time_conditioning, float(moved)


def test_attention_is_the_declared_pattern(case):
    _, net = case
    if isinstance(net, UNet):
        assert net.capabilities.attention == ("bidirectional",)
        return
    x = _ids(net)
    y = x.clone()
    y[:, -1] = (x[:, -1] + 1) % (net.config.vocab_size - 1)
    with torch.no_grad():
        moved = (net(x, _sigma(2))[:, 0] - net(y, _sigma(2))[:, 0]).abs().max()
    assert (moved > 1e-8) == ("bidirectional" in net.capabilities.attention)
    assert ("causal" in net.capabilities.attention) == (moved < 1e-12)


def test_block_causal_attention_takes_a_mask_and_positions(case):
    _, net = case
    x = _ids(net)
    L = x.shape[1]
    full = torch.ones(L, L, dtype=torch.bool)
    if "block_causal" not in net.capabilities.attention:
        if isinstance(net, UNet):
            with pytest.raises(CapabilityError):
                net(x, _sigma(2), attn_mask=full, positions=torch.arange(L))
        return
    with torch.no_grad():
        plain = net(x, _sigma(2))
        masked = net(x, _sigma(2), attn_mask=full, positions=torch.arange(L))
        blocks = net(x, _sigma(2), attn_mask=block_causal_mask(L, 4, x.device), positions=torch.arange(L))
    torch.testing.assert_close(masked, plain, atol=1e-10, rtol=0)
    torch.testing.assert_close(blocks[:, :4], net(x[:, :4], _sigma(2)), atol=1e-10, rtol=0)  # block 0 sees itself


def test_soft_inputs_equal_ids_where_declared_and_are_refused_elsewhere(case):
    _, net = case
    x = _ids(net)
    one_hot = F.one_hot(x, net.config.vocab_size).double()
    if not net.capabilities.soft_inputs:
        with pytest.raises(CapabilityError):
            net(x[..., None], _sigma(2), weights=torch.ones(*x.shape, 1))
        return
    with torch.no_grad():
        ids = net(x, _sigma(2))
        weighted = net(torch.stack([x, (x + 1) % V], -1), _sigma(2),
                       weights=torch.stack([torch.ones_like(x), torch.zeros_like(x)], -1).double())
        soft = net(one_hot * 1e4, _sigma(2)) if isinstance(net, DiT) else net(one_hot, _sigma(2))
    torch.testing.assert_close(weighted, ids, atol=1e-10, rtol=0)
    torch.testing.assert_close(soft, ids, atol=1e-8, rtol=0)


def test_the_head_sees_the_features_the_logits_are_made_from(case):
    _, net = case
    x = _ids(net)
    if not net.capabilities.head:
        with pytest.raises(CapabilityError):
            net(x, _sigma(2), head=lambda f, w, b: None)
        return
    with torch.no_grad():
        logits = net(x, _sigma(2))
        via_head = net(x, _sigma(2), head=lambda f, w, b: F.linear(f, w, b))
    torch.testing.assert_close(via_head, logits, atol=1e-10, rtol=0)


def test_labels_move_the_output_where_declared_and_are_refused_elsewhere(case):
    _, net = case
    x = _ids(net)
    if not net.capabilities.class_conditioning:
        with pytest.raises(ValueError, match="unconditional"):
            net(x, _sigma(2), class_cond=torch.zeros(2, dtype=torch.long))
        return
    with torch.no_grad():
        a = net(x, _sigma(2), class_cond=torch.tensor([0, 1]))
        b = net(x, _sigma(2), class_cond=torch.tensor([2, 2]))
    assert (a - b).abs().max() > 1e-8


def test_the_cache_equals_the_cache_free_pass_where_declared(case):
    """Causal: a prompt then one token a call == the causal pass. Block-causal: clean blocks
    committed, then a noisy block read without being kept == the block-causal pass over both; the
    cache's rows and positions select what they say."""
    _, net = case
    if not net.capabilities.kv_cache:
        with pytest.raises(CapabilityError, match="no key-value cache"):
            net.new_cache()
        return
    x = _ids(net, B=3, L=8)
    zero = _sigma(3, 0.0)
    with torch.no_grad():
        cache = net.new_cache()
        assert isinstance(cache, KVCache) and len(cache) == 0
        if "causal" in net.capabilities.attention:
            full = net(x)
            parts = [net(x[:, :4], cache=cache)]
            for i in range(4, 8):
                parts.append(net(x[:, i:i + 1], cache=cache, position_offset=i))
            torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=0)
            assert len(cache) == 8
            return
        net(x[:, :4], zero, cache=cache, position_offset=0, store_kv=True)
        assert len(cache) == 4
        noisy = x[:, 4:].flip(0)
        cached = net(noisy, _sigma(3), cache=cache, position_offset=4, store_kv=False)
        assert len(cache) == 4  # read, not kept
        inputs = torch.cat([x[:, :4], noisy], 1)
        sigma = torch.cat([torch.zeros(3, 4, dtype=torch.float64), _sigma(3)[:, None].expand(3, 4)], 1)
        reference = net(inputs, sigma if net.capabilities.time_conditioning else _sigma(3),
                        attn_mask=block_causal_mask(8, 4, x.device), positions=torch.arange(8))[:, 4:]
        torch.testing.assert_close(cached, reference, atol=1e-10, rtol=0)
        # rows: the cache of rows [2, 0] reads as those rows' own caches
        cache.select_rows(torch.tensor([2, 0]))
        torch.testing.assert_close(net(noisy[[2, 0]], _sigma(2), cache=cache, position_offset=4, store_kv=False),
                                   cached[[2, 0]], atol=1e-10, rtol=0)
        # positions: of two committed blocks, the first one's positions read as a cache of that block alone
        two, one = net.new_cache(), net.new_cache()
        for c, blocks in ((two, (0, 2)), (one, (0,))):
            for start in blocks:
                net(x[:, start:start + 2], zero, cache=c, position_offset=start, store_kv=True)
        short = two.keep_positions(torch.arange(2))
        assert isinstance(short, KVCache) and len(short) == 2 and len(two) == 4
        torch.testing.assert_close(net(noisy, _sigma(3), cache=short, position_offset=2, store_kv=False),
                                   net(noisy, _sigma(3), cache=one, position_offset=2, store_kv=False),
                                   atol=1e-10, rtol=0)
        cache.crop(2)
        assert len(cache) == 2


def test_the_weights_survive_a_safetensors_round_trip(case, tmp_path):
    """What duolm's model folder does with a network's state dict (a tied head, adapters only, ...)
    gives back the same function in a fresh network of the same config."""
    from safetensors.torch import load_file, save_file

    name, net = case
    if net.capabilities.adapters:
        pytest.skip("an adapters-only state reads its base from model.pretrained (tests/test_hf_backbone.py "
                    "round-trips a LoRA folder)")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    torch.manual_seed(1)
    fresh = _jiggled(CASES[name]())
    fresh.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x = _ids(net)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, _sigma(2)), net(x, _sigma(2)), atol=1e-10, rtol=0)


def test_adapters_are_declared_where_they_merge(case):
    """merged() folds the adapters in float32 (a fresh network): equal to 1e-6, not 1e-10."""
    _, net = case
    assert net.capabilities.adapters == (getattr(net.config, "lora", None) is not None)
    if net.capabilities.adapters:
        x = _ids(net)
        with torch.no_grad():
            torch.testing.assert_close(net.merged().double().eval()(x, _sigma(2)), net(x, _sigma(2)), atol=1e-6,
                                       rtol=0)


def test_the_training_step_changes_attention_only_where_declared(case):
    _, net = case
    x = _ids(net)
    net.train()
    try:
        with torch.no_grad():  # the same dropout draws in both calls (GPT-2 drops in training)
            net.set_step(None)
            torch.manual_seed(0)
            before = net(x, _sigma(2))
            net.set_step(1)
            torch.manual_seed(0)
            after = net(x, _sigma(2))
    finally:
        net.set_step(None)
        net.eval()
    assert ((before - after).abs().max() > 1e-8) == net.capabilities.training_step


def test_a_refused_capability_is_one_sentence():
    caps = CASES["unet"]().capabilities
    with pytest.raises(CapabilityError, match=r"^sampling.confidence.cache needs a backbone with kv cache, which this "
                                              r"one does not declare$"):
        caps.require("kv_cache", "sampling.confidence.cache")
    with pytest.raises(CapabilityError, match="needs block-causal attention"):
        caps.require_attention("block_causal", "algo.block_size")


@pytest.mark.parametrize("algo,block_size", [("ar", None), ("mdlm", None), ("mdlm", 4), ("duo_base", 4)])
def test_a_method_asks_the_attention_it_needs(case, algo, block_size):
    """AR needs a causal network, block diffusion block-causal masks, whole-sequence diffusion a
    bidirectional one: Method.check_backbone asks the declared attention, one sentence otherwise."""
    from duolm.core.methods import build_method

    _, net = case
    method = build_method(algo, 6, block_size=block_size)
    needed = "causal" if algo == "ar" else "block_causal" if block_size else "bidirectional"
    if needed in net.capabilities.attention:
        method.check_backbone(net.capabilities)
    else:
        with pytest.raises(CapabilityError, match=f"needs {needed.replace('_', '-')} attention"):
            method.check_backbone(net.capabilities)
