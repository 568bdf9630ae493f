"""The papers' image UNet: duolm's port computes their logits from their weights (raw and EMA, with
a class and without), on a CPU, which theirs cannot run on (tests the shared fixture)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from duolm.models.unet import UNet, UNetConfig

FIX = Path(__file__).parent / "fixtures" / "reference-unet"  # the shared fixture without its 5.7 MB .ckpt
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference-unet"  # with it, where present


def fixture_unet() -> tuple[UNet, dict]:
    case = json.loads((FIX / "case.json").read_text())
    m = case["config"]["model"]
    cfg = UNetConfig(vocab_size=case["config"]["vocab_size"], channels=m["input_channels"],
                     image_size=int(m["size"] ** 0.5), ch=m["ch"], num_res_blocks=m["num_res_blocks"],
                     ch_mult=list(m["ch_mult"]), attn_scale=m["scale_count_to_put_attn"], dropout=0.0,
                     skip_rescale=m["skip_rescale"], time_embed_dim=m["time_embed_dim"],
                     time_scale_factor=m["time_scale_factor"], num_classes=case["config"]["num_classes"],
                     fix_logistic=m["fix_logistic"])
    return UNet(cfg).eval(), case


def test_the_parameters_are_the_papers_by_name_and_shape():
    net, case = fixture_unet()
    ours = [(n, list(p.shape)) for n, p in net.named_parameters()]
    assert ours == [(n, list(s)) for n, s in case["param_names"]]


@pytest.mark.parametrize("weights,cond", [("raw", True), ("raw", False), ("ema", True), ("ema", False)])
def test_the_logits_match_the_papers(weights, cond):
    net, case = fixture_unet()
    state = load_file(FIX / "model.safetensors")
    if weights == "ema":  # the fixture's EMA is each parameter + 0.01 (its README); the .ckpt test checks that
        state = {k: v + 0.01 for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    inp = case["inputs"]
    x = torch.tensor(inp["x"], dtype=torch.long)
    sigma = torch.tensor(inp["sigma"], dtype=torch.float32)
    cc = torch.tensor(inp["class_cond"], dtype=torch.long) if cond else None
    with torch.no_grad():
        got = net(x, sigma, class_cond=cc)
    key = {("raw", True): "raw", ("raw", False): "raw_class_cond_none", ("ema", True): "ema",
           ("ema", False): "ema_class_cond_none"}[(weights, cond)]
    expected = load_file(FIX / "outputs.safetensors")[key]
    assert got.shape == expected.shape == (3, 192, 256)
    # 1e-4 wherever a bin has probability above e^-8; in the far tails log(e^a - e^b) cancels, so
    # float rounding of the network is amplified there: the papers' own code, run on this machine,
    # differs from the fixture by up to 9.6e-3 at logits near -12 (measured) and equals ours exactly
    body = expected > -8
    torch.testing.assert_close(got[body], expected[body], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[~body], expected[~body], atol=1e-4, rtol=5e-3)
    # the bins' masses of a logistic truncated to [-1, 1], not renormalised (the softmax downstream does)
    assert (got.exp().sum(-1) < 1.0 + 256 * 1e-6 + 1e-5).all()


@pytest.mark.skipif(not (SHARED / "lightning.ckpt").exists(), reason="the shared fixture's .ckpt is not here")
def test_the_lightning_checkpoint_holds_the_same_raw_weights_and_the_ema():
    from duolm.checkpoints import strip_prefix

    ckpt = torch.load(SHARED / "lightning.ckpt", map_location="cpu", weights_only=True)
    raw = strip_prefix(ckpt["state_dict"], "backbone.")
    net, _ = fixture_unet()
    net.load_state_dict(raw, strict=True)
    for k, v in load_file(FIX / "model.safetensors").items():
        assert torch.equal(raw[k], v), k
    names = [n for n, _ in net.named_parameters()]  # the EMA: an unnamed list in parameters() order
    for n, shadow in zip(names, ckpt["ema"]["shadow_params"]):
        torch.testing.assert_close(shadow, raw[n] + 0.01, rtol=0, atol=1e-6)
