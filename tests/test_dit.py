"""The DiT reproduces the logits of the papers' own DIT for the same weights and inputs."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from duolm.models.dit import DiT, DiTConfig, KVCache

FIXTURES = Path(__file__).parent / "fixtures" / "reference-dit"


def _tensor(v, dtype):
    return torch.tensor(v, dtype=torch.float64).to(dtype) if dtype.is_floating_point else torch.tensor(v, dtype=dtype)


def _build(variant):
    case = json.loads((FIXTURES / variant / "case.json").read_text())
    cfg = case["config"]
    m = cfg["model"]
    model = DiT(DiTConfig(vocab_size=cfg["vocab_size"], hidden_size=m["hidden_size"], cond_dim=m["cond_dim"],
                          n_blocks=m["n_blocks"], n_heads=m["n_heads"], dropout=0.0,
                          causal=cfg["algo"]["causal_attention"]))
    state = load_file(FIXTURES / variant / "model.safetensors")
    state.pop("rotary_emb.inv_freq")
    model.load_state_dict(state, strict=True)
    return model.eval(), case


@pytest.mark.parametrize("variant", ["duo", "ar"])
@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_logits_match_the_reference(variant, weights):
    model, case = _build(variant)
    if weights == "ema":
        ckpt = torch.load(FIXTURES / variant / "lightning.ckpt", weights_only=True, map_location="cpu")
        shadow = ckpt["ema"]["shadow_params"]
        params = list(model.parameters())
        assert len(shadow) == len(params)
        with torch.no_grad():
            for p, s in zip(params, shadow):
                p.copy_(s)
    for c in case["cases"]:
        inp = c["inputs"]
        x = _tensor(inp["x"], getattr(torch, inp["x_dtype"]))
        sigma = None if inp["sigma"] is None else _tensor(inp["sigma"], torch.float32)
        w = None if inp["weights"] is None else _tensor(inp["weights"], torch.float32)
        expect = _tensor(c["outputs"][f"{weights}_float32"], torch.float32)
        with torch.no_grad():
            got = model(x, sigma, weights=w)
        torch.testing.assert_close(got, expect, atol=1e-4, rtol=0, msg=f"{variant}/{c['name']}/{weights}")


def test_kv_cache_decoding_matches_the_full_causal_pass():
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=11, hidden_size=32, cond_dim=8, n_blocks=2, n_heads=4, dropout=0.0,
                          causal=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        x = torch.randint(0, 11, (2, 9))
        full = model(x)
        caches = [KVCache() for _ in model.blocks]
        parts = [model(x[:, :4], kv_caches=caches)]
        for i in range(4, 9):
            parts.append(model(x[:, i:i + 1], kv_caches=caches, position_offset=i))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_bad_head_count_is_a_clear_error():
    with pytest.raises(ValueError, match="model.hidden_size"):
        DiT(DiTConfig(vocab_size=5, hidden_size=30, n_heads=4))
