"""Loading the papers' checkpoints: fixture logits, restricted unpickling, HF layouts, bad files."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from duolm.checkpoints.loading import from_pretrained, save_pretrained
from duolm.checkpoints.loading import load_pretrained as load
from duolm.checkpoints.papers import load_lightning_checkpoint

FIX = Path(__file__).parent / "fixtures" / "reference-dit"


def _case(variant):
    return json.loads((FIX / variant / "case.json").read_text())


def _check_logits(net, variant, which):
    case = _case(variant)
    for c in case["cases"]:
        inp = c["inputs"]
        dtype = getattr(torch, inp["x_dtype"])
        x = torch.tensor(inp["x"], dtype=torch.float64).to(dtype) if dtype.is_floating_point else \
            torch.tensor(inp["x"], dtype=dtype)
        sigma = None if inp["sigma"] is None else torch.tensor(inp["sigma"], dtype=torch.float64).float()
        w = None if inp["weights"] is None else torch.tensor(inp["weights"], dtype=torch.float64).float()
        with torch.no_grad():
            got = net(x, sigma, weights=w)
        expect = torch.tensor(c["outputs"][f"{which}_float32"], dtype=torch.float64).float()
        torch.testing.assert_close(got, expect, atol=1e-4, rtol=0)


def _char_tok_for(variant):
    """The fixtures use a 37-token vocabulary; a char tokenizer of the right size stands in."""
    V = _case(variant)["config"]["vocab_size"]
    tokens = V - 1 if variant == "ar" else V  # the papers' AR has an extra (mask) output row
    return {"type": "char", "alphabet": "".join(chr(ord("!") + i) for i in range(tokens - 1))}  # + EOS


@pytest.mark.parametrize("variant,algo", [("duo", "duo"), ("ar", "ar")])
@pytest.mark.parametrize("ema", [False, True])
def test_lightning_checkpoints_reproduce_the_papers_logits(variant, algo, ema):
    pre = load(FIX / variant / "lightning.ckpt", algo=algo, use_ema=ema, tokenizer=_char_tok_for(variant),
                         n_heads=4)
    _check_logits(pre.backbone, variant, "ema" if ema else "raw")
    assert pre.config["algo"]["name"] == algo


def _hub_duo_dir(tmp_path, variant="duo"):
    d = tmp_path / "hub-duo"
    d.mkdir()
    shutil.copy(FIX / variant / "model.safetensors", d / "model.safetensors")
    conf = {"config": {"algo": {"name": "duo", "causal_attention": False},
                       "model": {"hidden_size": 64, "cond_dim": 32, "n_blocks": 2, "n_heads": 4, "length": 32},
                       "noise": {"type": "log-linear"}, "data": {"tokenizer_name_or_path": _char_tok_for(variant)}},
            "vocab_size": 37}
    (d / "config.json").write_text(json.dumps(conf))
    return d


def test_duo_hugging_face_layout(tmp_path):
    pre = load(_hub_duo_dir(tmp_path))
    _check_logits(pre.backbone, "duo", "raw")
    assert pre.method.name == "duo" and pre.backbone.config.n_heads == 4


def test_mdlm_hugging_face_layout(tmp_path):
    d = tmp_path / "mdlm-owt"
    d.mkdir()
    state = {f"backbone.{k}": v for k, v in load_file(FIX / "duo" / "model.safetensors").items()}
    save_file(state, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "mdlm", "vocab_size": 37, "hidden_dim": 64,
                                               "cond_dim": 32, "n_blocks": 2, "n_heads": 4, "model_length": 32}))
    tok = {"type": "char", "alphabet": "".join(chr(ord("!") + i) for i in range(35))}  # 36 tokens + mask = 37
    pre = load(d, tokenizer=tok)
    _check_logits(pre.backbone, "duo", "raw")
    assert pre.method.name == "mdlm" and pre.method.mask_id == 36


class FakeTokenizer:
    def __init__(self):
        self.vocab = {"a": 0}


def _real_style_ckpt(tmp_path, extra=None):
    """A checkpoint shaped like a real one: a pickled OmegaConf config and tokenizer object."""
    from omegaconf import OmegaConf

    ckpt = torch.load(FIX / "duo" / "lightning.ckpt", weights_only=True)
    conf = OmegaConf.create({"algo": {"name": "duo"}, "model": {"n_heads": 4, "length": 32},
                             "noise": {"type": "log-linear"}, "data": {"tokenizer_name_or_path": "gpt2"},
                             "loader": {"batch_size": "${eval:1+1}"}})
    ckpt["hyper_parameters"] = {"config": conf, "tokenizer": FakeTokenizer()}
    if extra is not None:
        ckpt["evil"] = extra
    path = tmp_path / "real.ckpt"
    torch.save(ckpt, path)
    return path


def test_pickled_configs_are_read_without_running_their_code(tmp_path):
    path = _real_style_ckpt(tmp_path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what the papers' checkpoints do to a safe loader
    ckpt = load_lightning_checkpoint(path)
    from duolm.checkpoints.papers import OpaqueObject, plain

    assert isinstance(ckpt["hyper_parameters"]["tokenizer"], OpaqueObject)
    conf = plain(ckpt["hyper_parameters"]["config"])
    assert conf["algo"]["name"] == "duo" and conf["model"]["n_heads"] == 4
    # the algo is recognised from the file; a contradicting one is refused with a sentence
    with pytest.raises(ValueError, match="holds a duo model, but algo=mdlm was asked"):
        load(path, algo="mdlm")


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/duolm-pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    if os.path.exists("/tmp/duolm-pwned"):
        os.remove("/tmp/duolm-pwned")
    path = _real_style_ckpt(tmp_path, extra=Exploit())
    with pytest.raises(ValueError, match="refused to load"):
        load_lightning_checkpoint(path)
    assert not os.path.exists("/tmp/duolm-pwned")


def test_bad_files_get_clear_errors(tmp_path):
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes((FIX / "duo" / "lightning.ckpt").read_bytes()[:5000])
    with pytest.raises(ValueError, match="trunc.ckpt"):
        load(trunc, algo="duo")
    ckpt = torch.load(FIX / "duo" / "lightning.ckpt", weights_only=True)
    del ckpt["state_dict"]["backbone.blocks.1.mlp.0.weight"]
    torch.save(ckpt, tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="missing keys"):
        load(tmp_path / "missing.ckpt", algo="duo", use_ema=False, tokenizer=_char_tok_for("duo"), n_heads=4)
    ckpt = torch.load(FIX / "duo" / "lightning.ckpt", weights_only=True)
    ckpt["ema"]["shadow_params"][3] = torch.zeros(5, 5)
    torch.save(ckpt, tmp_path / "shape.ckpt")
    with pytest.raises(ValueError, match="has shape"):
        load(tmp_path / "shape.ckpt", algo="duo", tokenizer=_char_tok_for("duo"), n_heads=4)
    with pytest.raises(ValueError, match="the network has 37 outputs, but algo=duo .* needs 30"):
        tok = {"type": "char", "alphabet": "".join(chr(ord("!") + i) for i in range(29))}  # 30 tokens
        load(FIX / "duo" / "lightning.ckpt", tokenizer=tok, n_heads=4)
    with pytest.raises(ValueError, match="holds a duo model, but algo=mdlm was asked"):
        load(FIX / "duo" / "lightning.ckpt", algo="mdlm", n_heads=4)
    with pytest.raises(ValueError, match="weights are a diffusion DiT, but algo=ar"):
        load(_hub_duo_dir(tmp_path), algo="ar")
    d = tmp_path / "nojson"
    d.mkdir()
    (d / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(d)


def test_round_trip_gives_identical_outputs_and_samples(tmp_path):
    from duolm.sampling import SamplerSpec
    from duolm.sampling.generate import GenerationRequest, generate

    pre = load(FIX / "duo" / "lightning.ckpt", algo="duo", tokenizer=_char_tok_for("duo"), n_heads=4)
    out = save_pretrained(tmp_path / "m", pre.backbone, algo=pre.config["algo"], noise=pre.config["noise"],
                          tokenizer=pre.tokenizer, length=32)
    again = from_pretrained(out)
    x = torch.randint(0, 37, (2, 32))
    s = torch.tensor([0.3, 1.2])
    with torch.no_grad():
        torch.testing.assert_close(again.backbone(x, s), pre.backbone(x, s), rtol=0, atol=0)
    spec = SamplerSpec(steps=4)
    request = GenerationRequest(spec, length=32, num_samples=2, batch_size=2, seed=3)
    a = generate(pre.method, pre.backbone, pre.tokenizer, request, progress=False)
    b = generate(again.method, again.backbone, again.tokenizer, request, progress=False)
    assert [x["ids"] for x in a["samples"]] == [x["ids"] for x in b["samples"]]


def test_convert_command_writes_a_duolm_directory(tmp_path, capsys):
    from duolm.app.cli import main

    out = tmp_path / "converted"
    assert main(["convert", f"eval.checkpoint_path={_hub_duo_dir(tmp_path)}", f"convert.output={out}"]) == 0
    assert "wrote" in capsys.readouterr().out
    pre = from_pretrained(out)
    _check_logits(pre.backbone, "duo", "raw")
    assert json.loads((out / "config.json").read_text())["algo"]["name"] == "duo"
    (tmp_path / "x").mkdir()
    assert main(["convert", f"eval.checkpoint_path={_hub_duo_dir(tmp_path / 'x')}"]) == 1
    assert "convert.output" in capsys.readouterr().err


def test_an_unreachable_hub_id_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from duolm.io.hub_access import HubUnreachable

    with pytest.raises(HubUnreachable, match="could not be reached .HF_HUB_OFFLINE is set. and the model "
                                             "nobody-here/no-such-model is not in the local cache") as err:
        load("nobody-here/no-such-model")
    assert "\n" not in str(err.value)


def test_float16_storage_halves_the_file_and_keeps_the_logits_close(tmp_path):
    from duolm.app.cli import main

    full, half = tmp_path / "f32", tmp_path / "f16"
    assert main(["convert", f"eval.checkpoint_path={_hub_duo_dir(tmp_path)}", f"convert.output={full}"]) == 0
    assert main(["convert", f"eval.checkpoint_path={full}", f"convert.output={half}", "convert.dtype=float16"]) == 0
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    a, b = from_pretrained(full).backbone, from_pretrained(half).backbone
    assert all(p.dtype == torch.float32 for p in b.parameters())   # read back as a float32 model
    x = torch.randint(0, a.config.vocab_size, (2, 16))
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(b(x, sigma), a(x, sigma), atol=2e-2, rtol=0)
    assert main(["convert", f"eval.checkpoint_path={full}", f"convert.output={half}", "convert.dtype=int8"]) == 1


def test_builtin_models_resolve_by_name():
    from duolm.checkpoints.loading import builtin_models, resolve_builtin

    assert resolve_builtin("some/dir") == "some/dir"
    with pytest.raises(FileNotFoundError, match="no built-in model 'nope'"):
        resolve_builtin("builtin:nope")
    for name, path in builtin_models().items():
        assert resolve_builtin(f"builtin:{name}") == str(path)


def test_the_shipped_model_loads_and_samples():
    """The float16 built-in model ships with the package (a missing file fails here, not later)."""
    from safetensors import safe_open

    from duolm.checkpoints.loading import builtin_models
    from duolm.checkpoints.loading import load_pretrained as load
    from duolm.sampling import SAMPLERS, SamplerSpec, SamplingModel

    models = builtin_models()
    assert "duo-bigtxt-dcd" in models, f"the package data is missing: built-in models found: {sorted(models)}"
    with safe_open(str(models["duo-bigtxt-dcd"] / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16  # stored at half size
    pre = load("builtin:duo-bigtxt-dcd")
    assert all(p.dtype == torch.float32 for p in pre.backbone.parameters())
    spec = SamplerSpec(predictor="ancestral", steps=8)
    x = SAMPLERS["ancestral"].run(SamplingModel.from_method(pre.method, pre.backbone), spec, (2, 128),
                                  generator=torch.Generator().manual_seed(0))
    text = pre.tokenizer.decode(x[0].tolist())
    assert x.shape == (2, 128) and len(text) == 128 and text.count(" ") > 10  # words, not one repeated symbol
