"""Block diffusion's attention (BD3-LM): the masks by brute force, and the DiT's training pass, its
cache-free sampling pass and its block-by-block cached calls against the reference's logits
(../shared/fixtures/reference-bd3lm: seeded weights, the logits kuleshov-group/bd3lms computed)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from duolm.core.block_attention import block_causal_mask, block_diffusion_mask, training_positions
from duolm.models.dit import DiT, DiTConfig

FIXTURE = Path(__file__).parent / "fixtures" / "reference-bd3lm"  # a copy of ../shared/fixtures/reference-bd3lm
ATOL = 1e-4  # the fixture's suggested float32 tolerance (its own cache-vs-mask paths differ by 7e-7)


def test_block_diffusion_mask_by_rule():
    L, bs = 12, 4
    m = block_diffusion_mask(L, bs)
    assert m.shape == (2 * L, 2 * L)
    for q in range(2 * L):
        for k in range(2 * L):
            bq, bk = (q % L) // bs, (k % L) // bs
            noisy_q, noisy_k = q < L, k < L
            want = (bk == bq if noisy_k else bk < bq) if noisy_q else (False if noisy_k else bk <= bq)
            assert bool(m[q, k]) == want, (q, k)
    assert m.any(1).all()  # every query sees at least its own block
    assert torch.equal(m[L:, L:], block_causal_mask(L, bs))
    assert torch.equal(training_positions(3), torch.tensor([0, 1, 2, 0, 1, 2]))


def test_block_size_one_is_causal_and_block_size_L_is_bidirectional():
    L = 6
    assert torch.equal(block_causal_mask(L, 1), torch.ones(L, L, dtype=torch.bool).tril())
    assert block_causal_mask(L, L).all()


def _fixture():
    from safetensors.torch import load_file

    case = json.loads((FIXTURE / "case.json").read_text())
    m = case["config"]["model"]
    cfg = DiTConfig(vocab_size=case["config"]["vocab_size"], hidden_size=m["hidden_size"], cond_dim=m["cond_dim"],
                    n_blocks=m["n_blocks"], n_heads=m["n_heads"], dropout=0.0)
    net = DiT(cfg).eval()
    state = load_file(FIXTURE / "model.safetensors")
    missing, unexpected = net.load_state_dict({k: v for k, v in state.items() if k != "rotary_emb.inv_freq"},
                                              strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    torch.testing.assert_close(net.rotary_emb.inv_freq, state["rotary_emb.inv_freq"])
    return case, net, load_file(FIXTURE / "outputs.safetensors")


def _training_pass(net, x_input, sigma, L, bs):
    mask = block_diffusion_mask(L, bs)
    with torch.no_grad():
        return net(x_input, sigma, attn_mask=mask, positions=training_positions(L))[:, :L]


def test_the_training_pass_reproduces_bd3lm():
    case, net, out = _fixture()
    L, bs = case["config"]["model"]["length"], case["config"]["block_size"]
    x_input = torch.tensor(case["inputs"]["x_input"])
    sigma = torch.tensor(case["inputs"]["sigma"], dtype=torch.float32)
    torch.testing.assert_close(_training_pass(net, x_input, sigma, L, bs), out["train_forward"], atol=ATOL, rtol=0)
    timecond = torch.tensor(case["inputs"]["sigma_timecond"], dtype=torch.float32)
    torch.testing.assert_close(_training_pass(net, x_input, timecond, L, bs), out["train_forward_timecond"],
                               atol=ATOL, rtol=0)
    # the EMA weights of its Lightning checkpoint: shadow_params in parameters() order
    ckpt = torch.load(FIXTURE / "lightning.ckpt", weights_only=True)
    with torch.no_grad():
        for p, shadow in zip(net.parameters(), ckpt["ema"]["shadow_params"], strict=True):
            p.copy_(shadow)
    torch.testing.assert_close(_training_pass(net, x_input, sigma, L, bs), out["train_forward_ema"], atol=ATOL,
                               rtol=0)


def test_the_cache_free_sampling_pass_reproduces_bd3lm():
    case, net, out = _fixture()
    bs = case["config"]["block_size"]
    for call in next(c for c in case["cases"] if c["name"] == "sample_nocache")["calls"]:
        ids = torch.tensor(call["input_ids"])
        with torch.no_grad():
            got = net(ids, torch.tensor(call["sigma"]), attn_mask=block_causal_mask(ids.shape[1], bs))
        torch.testing.assert_close(got, out[call["output"]], atol=ATOL, rtol=0, msg=call["output"])


def test_block_by_block_cached_calls_reproduce_bd3lm():
    """24 calls in order on one cache: per block, an all-mask call, a partly unmasked one (neither
    kept) and the clean block stored; each noisy call sees the stored blocks and itself."""
    case, net, out = _fixture()
    _replay(net, next(c for c in case["cases"] if c["name"] == "cached")["calls"], out)


def _replay(net, calls, out) -> list[list[int]]:
    """The reference's calls in order on one fresh cache, each output checked against the fixture
    and the cache's length before and after; returns the input ids of the calls that stored."""
    caches = net.new_cache()
    stored = []
    for call in calls:
        assert len(caches) == call["cache_idx_before"]
        ids = torch.tensor(call["input_ids"])
        with torch.no_grad():
            got = net(ids, torch.tensor(call["sigma"]), cache=caches, position_offset=len(caches),
                      store_kv=call["store_kv"])
        torch.testing.assert_close(got, out[call["output"]], atol=ATOL, rtol=0, msg=call["output"])
        assert len(caches) == call["cache_idx_after"]
        if call["store_kv"]:
            stored.append(call["input_ids"])
    return stored


def test_the_reference_samplers_own_calls_replay_on_duolms_cache():
    """The 39 backbone calls of BD3-LM's first-hitting sampler (sampler_trace), in order on one
    fresh batch-1 cache: each noisy step and each store call gives the reference's logits, and the
    stored blocks are its final sample's."""
    case, net, out = _fixture()
    trace = next(c for c in case["cases"] if c["name"] == "sampler_trace")
    stored = _replay(net, trace["calls"], out)
    assert [t for ids in stored for t in ids[0]] == trace["final_sample"][0]


def test_cached_logits_equal_the_training_pass_in_float64():
    """The exact-cache claim: a noisy block's cached logits equal its rows of the block-diffusion
    pass (float64, 1e-10), for every block."""
    case, net, _ = _fixture()
    net = net.double()
    L, bs = case["config"]["model"]["length"], case["config"]["block_size"]
    x0, xt = torch.tensor(case["inputs"]["x0"]), torch.tensor(case["inputs"]["xt"])
    sigma = torch.zeros(x0.shape[0], dtype=torch.float64)
    full = _training_pass(net, torch.cat([xt, x0], 1), sigma, L, bs)
    caches = net.new_cache()
    with torch.no_grad():
        for b in range(L // bs):
            sl = slice(b * bs, (b + 1) * bs)
            noisy = net(xt[:, sl], sigma, cache=caches, position_offset=b * bs, store_kv=False)
            torch.testing.assert_close(noisy, full[:, sl], atol=1e-10, rtol=0, msg=f"block {b}")
            net(x0[:, sl], sigma, cache=caches, position_offset=b * bs, store_kv=True)
