"""The DiT reproduces the logits of the papers' own DIT for the same weights and inputs."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from said_as import raises_said_as

from duolm.models.dit import DiT, DiTConfig

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
        caches = model.new_cache()
        parts = [model(x[:, :4], cache=caches)]
        for i in range(4, 9):
            parts.append(model(x[:, i:i + 1], cache=caches, position_offset=i))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_bad_head_count_is_a_clear_error():
    with raises_said_as("model.hidden_size"):
        DiT(DiTConfig(vocab_size=5, hidden_size=30, n_heads=4))


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_blocks_train_like_eager_blocks_without_graph_breaks():
    """trainer.compile=true: DiT.compile() compiles each block in place; the chunked loss's head stays
    eager, so a training step breaks no graph and gives the eager step's loss and gradients."""
    import torch._dynamo

    from duolm.core.methods import build_method

    method = build_method("duo", 13)
    grads = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = DiT(DiTConfig(vocab_size=13, hidden_size=16, cond_dim=8, n_blocks=2, n_heads=2, dropout=0.0))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn_like(p))
        if compiled:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            net.compile()
        x0 = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(1))
        loss = method.token_loss(net, x0, generator=torch.Generator().manual_seed(2)).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
