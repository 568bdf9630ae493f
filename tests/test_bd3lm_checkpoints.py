"""BD3-LM's checkpoints through duolm.checkpoints.loading.load: its Lightning .ckpt (raw and EMA) and its
Hugging Face folder reproduce the logits kuleshov-group/bd3lms computed (tests/fixtures/reference-bd3lm,
a copy of ../shared/fixtures/reference-bd3lm), load as MDLM with blocks, and sample, score and
convert as block models."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from duolm.checkpoints.loading import from_pretrained, save_pretrained
from duolm.checkpoints.loading import load_pretrained as load
from duolm.core.methods import BlockTrainingPass

FIX = Path(__file__).parent / "fixtures" / "reference-bd3lm"
ATOL = 1e-4  # the fixture's suggested float32 tolerance
# 35 characters + the separator (id 35, the fixture's BOS) = 36 tokens; MDLM adds the mask (36): 37 outputs
TOKENIZER = {"type": "char", "alphabet": "".join(chr(ord("!") + i) for i in range(35))}


def _case():
    return json.loads((FIX / "case.json").read_text())


def _training_logits(pre):
    """The training pass's x_t-half logits, through duolm's own block-diffusion pass."""
    inp = _case()["inputs"]
    x0, xt = torch.tensor(inp["x0"]), torch.tensor(inp["xt"])
    with torch.no_grad():
        return BlockTrainingPass(pre.backbone, x0, pre.method.block_size)(xt, torch.zeros(x0.shape[0]))


def _hf_folder(tmp_path, ema: bool = True, name: str = "bd3lm-hf") -> Path:
    """The published layout: BD3LM.state_dict() (the two clip buffers, then backbone.<DiT key>),
    with the EMA copied into the parameters as push_to_hf.py does, and its config.json."""
    case = _case()
    ckpt = torch.load(FIX / "lightning.ckpt", weights_only=True)
    state = dict(ckpt["state_dict"])
    if ema:
        names = [n for n, kind, idx in ((r[0], r[2], r[3]) for r in case["param_names"]) if kind == "parameter"]
        for n, shadow in zip(names, ckpt["ema"]["shadow_params"], strict=True):
            state[f"backbone.{n}"] = shadow
    d = tmp_path / name
    d.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, d / "model.safetensors")
    m = case["config"]["model"]
    (d / "config.json").write_text(json.dumps({
        "model_type": "bd3lm", "architectures": ["BD3LM"], "block_size": case["config"]["block_size"],
        "vocab_size": case["config"]["vocab_size"], "model_length": m["length"], "hidden_dim": m["hidden_size"],
        "cond_dim": m["cond_dim"], "n_blocks": m["n_blocks"], "n_heads": m["n_heads"], "cross_attn": True,
        "adaln": True, "attn_backend": "sdpa", "causal": False, "dropout": 0.0, "time_conditioning": False,
        "var_min": True, "sampling_eps_min": 1e-3, "sampling_eps_max": 1.0, "return_dict": False}))
    return d


@pytest.mark.parametrize("ema", [False, True])
def test_the_lightning_checkpoint_reproduces_bd3lm_and_loads_as_mdlm_with_blocks(ema):
    pre = load(FIX / "lightning.ckpt", use_ema=ema, tokenizer=TOKENIZER)
    out = load_file(FIX / "outputs.safetensors")
    torch.testing.assert_close(_training_logits(pre), out["train_forward_ema" if ema else "train_forward"],
                               atol=ATOL, rtol=0)
    m = pre.method
    assert (m.name, m.block_size, m.time_conditioning, m.mask_id) == ("mdlm", 4, False, 36)
    assert pre.config["algo"]["block_size"] == 4 and "clip_min" not in pre.config["algo"]  # the full [1e-3, 1]
    assert pre.config["length"] == 32


def test_the_hugging_face_folder_reproduces_the_cached_calls(tmp_path):
    """The published folders hold the EMA weights; block-by-block calls on duolm's cache equal the
    reference's `cached` outputs of the raw weights when the folder holds the raw ones."""
    pre = load(_hf_folder(tmp_path), tokenizer=TOKENIZER)
    out = load_file(FIX / "outputs.safetensors")
    torch.testing.assert_close(_training_logits(pre), out["train_forward_ema"], atol=ATOL, rtol=0)
    raw = load(_hf_folder(tmp_path, ema=False, name="raw"), tokenizer=TOKENIZER)
    caches = raw.backbone.new_cache()
    for call in next(c for c in _case()["cases"] if c["name"] == "cached")["calls"]:
        with torch.no_grad():
            got = raw.backbone(torch.tensor(call["input_ids"]), torch.tensor(call["sigma"]), cache=caches,
                               position_offset=len(caches), store_kv=call["store_kv"])
        torch.testing.assert_close(got, out[call["output"]], atol=ATOL, rtol=0, msg=call["output"])
    assert raw.method.block_size == 4


def test_a_bd3lm_model_samples_block_by_block_scores_with_the_block_nelbo_and_converts(tmp_path):
    from duolm.app.api import Model
    from duolm.core.methods import build_method
    from duolm.evaluation.likelihood import continuation_nelbo

    pre = load(FIX / "lightning.ckpt", tokenizer=TOKENIZER)
    model = Model(pre, device="cpu")
    gen = model.generate(2, steps=4, seed=0, length=48)  # past the model's 32: blocks go on with the cache
    assert len(gen.ids[0]) == 48 and gen.result["denoiser_calls"] > 0
    assert all(0 <= t < 36 for ids in gen.ids for t in ids)  # no mask left, no out-of-vocabulary id
    # the NELBO a block model reports is the block NELBO: continuation scoring (eval, lm-eval) runs
    # the method's sequence_nelbo with the context held clean, and that differs from the
    # whole-sequence MDLM's on the same draw
    x0 = torch.tensor(_case()["inputs"]["x0"])
    scored = torch.ones_like(x0, dtype=torch.float)
    scored[:, 0] = 0
    clean = scored == 0
    with torch.no_grad():
        block = pre.method.sequence_nelbo(pre.backbone, x0, scored, generator=torch.Generator().manual_seed(0),
                                          clean=clean)[0]
        whole = build_method("mdlm", 36, time_conditioning=False).sequence_nelbo(
            pre.backbone, x0, scored, generator=torch.Generator().manual_seed(0), clean=clean)[0]
    assert not torch.allclose(block, whole, rtol=1e-3)
    pairs = [(x0[i, :1].tolist(), x0[i, 1:].tolist()) for i in range(2)]
    got = continuation_nelbo(pre.method, pre.backbone, pairs, length=32, pad_id=35, num_samples=1, seed=0)
    torch.testing.assert_close(torch.tensor([r["nelbo"] for r in got], dtype=torch.float64), block, rtol=1e-12,
                               atol=0)
    # convert: a duolm folder that records the blocks and reloads with the same logits and samples
    out = save_pretrained(tmp_path / "converted", pre.backbone, algo=pre.config["algo"], noise=pre.config["noise"],
                          tokenizer=pre.tokenizer, length=32)
    again = from_pretrained(out)
    assert again.method.block_size == 4 and again.method.time_conditioning is False
    torch.testing.assert_close(_training_logits(again), _training_logits(pre), atol=0, rtol=0)
    assert Model(again, device="cpu").generate(2, steps=4, seed=0, length=48).ids == gen.ids


def test_a_clipped_training_range_is_read_and_a_wrong_algo_refused(tmp_path):
    ckpt = torch.load(FIX / "lightning.ckpt", weights_only=True)
    ckpt["sampling_eps_min"], ckpt["sampling_eps_max"] = torch.tensor(0.3), torch.tensor(0.8)
    torch.save(ckpt, tmp_path / "clipped.ckpt")
    pre = load(tmp_path / "clipped.ckpt", tokenizer=TOKENIZER)
    assert (pre.config["algo"]["clip_min"], pre.config["algo"]["clip_max"]) == pytest.approx((0.3, 0.8))
    with pytest.raises(ValueError, match="holds a mdlm model, but algo=duo was asked"):
        load(FIX / "lightning.ckpt", algo="duo", tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="BD3-LM .* but algo=duo was asked"):
        load(_hf_folder(tmp_path), algo="duo", tokenizer=TOKENIZER)
