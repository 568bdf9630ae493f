"""The papers' image UNet: duolm's port computes their logits from their weights (raw and EMA, with
a class and without), on a CPU, which theirs cannot run on (tests the shared fixture)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from said_as import raises_said_as

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
    from duolm.checkpoints.loading import strip_prefix

    ckpt = torch.load(SHARED / "lightning.ckpt", map_location="cpu", weights_only=True)
    raw = strip_prefix(ckpt["state_dict"], "backbone.")
    net, _ = fixture_unet()
    net.load_state_dict(raw, strict=True)
    for k, v in load_file(FIX / "model.safetensors").items():
        assert torch.equal(raw[k], v), k
    names = [n for n, _ in net.named_parameters()]  # the EMA: an unnamed list in parameters() order
    for n, shadow in zip(names, ckpt["ema"]["shadow_params"]):
        torch.testing.assert_close(shadow, raw[n] + 0.01, rtol=0, atol=1e-6)


def _small_unet(**kw) -> UNet:
    torch.manual_seed(0)
    cfg = UNetConfig(vocab_size=17, channels=1, image_size=8, ch=8, num_res_blocks=1, ch_mult=[1, 2], attn_scale=1,
                     time_embed_dim=8, dropout=0.0, num_classes=0, **kw)
    return UNet(cfg).eval()


def test_the_papers_mask_encoding_is_the_default_and_adds_no_parameter():
    gray, embedding = _small_unet(), _small_unet(mask_input="embedding")
    assert gray.config.mask_input == "gray" and "mask_embedding" not in dict(gray.named_parameters())
    assert set(dict(embedding.named_parameters())) - set(dict(gray.named_parameters())) == {"mask_embedding"}
    with raises_said_as("model.mask_input must be one of gray, embedding"):
        UNetConfig(mask_input="learned")


def test_the_mask_embedding_centres_a_masked_pixel_to_mid_range_and_marks_only_masked_pixels():
    """16 gray levels + the mask (id 16): with the learned vector at zero a masked pixel reads exactly
    as mid-range (centred 2 x 8.5 / 17 - 1 = 0; the gray form's float input takes 8.5), where the
    papers' form reads it as 2 x 16 / 17 - 1, just above white; the vector changes only images with a mask."""
    net = _small_unet(mask_input="embedding")
    gray = _small_unet()
    gray.load_state_dict({k: v for k, v in net.state_dict().items() if k != "mask_embedding"})
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 16, (3, 64), generator=g)
    sigma = torch.rand(3, generator=g)
    masked = x.clone()
    masked[:, ::3] = 16
    with torch.no_grad():
        # no masks: the same network as the papers' encoding
        torch.testing.assert_close(net(x, sigma), gray(x, sigma), rtol=0, atol=0)
        # masks with a zero vector: what the gray form gives with those pixels centred to 0 instead of 2*16/17 - 1
        expected = gray(torch.where(masked == 16, 8.5, masked.float()), sigma)
        torch.testing.assert_close(net(masked, sigma), expected, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(gray(masked, sigma), expected, atol=1e-3)  # the papers' form reads them as white
        net.mask_embedding.normal_()
        torch.testing.assert_close(net(x, sigma), gray(x, sigma), rtol=0, atol=0)
        assert not torch.allclose(net(masked, sigma), expected, atol=1e-3)
