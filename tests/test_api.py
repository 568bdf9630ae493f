"""The three-line Python API (duolm.load -> generate / infill / nelbo) on the built-in model."""
import json
import subprocess
import sys

import pytest

import duolm


@pytest.fixture(scope="module")
def model():
    return duolm.load("builtin:duo-bigtxt-dcd", device="cpu")


def test_generate_holds_the_prompt_and_gives_n_texts(model):
    g = model.generate(n=3, steps=4, prompt="the old man", seed=1)
    assert len(g.texts) == 3 and len(g.ids) == 3 and all(len(i) == model.length for i in g.ids)
    assert all(t.startswith("the old man") for t in g.texts)  # the framing BOS is in the ids only
    assert all(i[0] == model.tokenizer.bos_id for i in g.ids)
    again = model.generate(n=3, steps=4, prompt="the old man", seed=1)
    assert again.texts == g.texts  # seeded
    psi = model.generate(n=1, steps=4, sampler="psi", kappa="max-capped-0.02")
    assert psi.result["sampler"]["predictor"] == "psi"
    # the sampler's own settings reach its spec: a kappa string for every part, and its keys as keywords
    spec = model.spec(sampler="psi", kappa="max-capped-0.02", plateau=0.3, time_profile="linear-constant-linear")
    assert {k.mode for k in (spec.options.kappa.high, spec.options.kappa.middle, spec.options.kappa.low)} == {"max-capped"}
    assert spec.options.kappa.middle.eta == 0.02 and spec.options.plateau == 0.3
    assert spec.options.time_profile == "linear-constant-linear"
    assert len(model.generate(n=1, steps=2, length=40).ids[0]) == 40
    assert len(model.generate(n=1, steps=2, length=200).ids[0]) == 200  # semi-autoregressive windows


def test_infill_keeps_the_template_and_marks_what_it_generated(model):
    f = model.infill("the [___] sat on the [___:3] mat", n=2, steps=8)
    for text, spans in zip(f.texts, f.spans):
        assert text.startswith("the ") and text.endswith(" mat") and " sat on the " in text
        assert [s["end"] - s["start"] for s in spans] == [8, 3]
        assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)


def test_nelbo_prefers_english_and_reports_its_standard_error(model):
    english, noise = model.nelbo(["the old man and the sea", "qxz vkjw zzq pqx wvvkj"], num_mc_samples=64)
    assert english.tokens == 23 and noise.tokens == 22
    assert english.se > 0 and noise.nelbo - english.nelbo > 3 * (english.se ** 2 + noise.se ** 2) ** 0.5
    assert english.bits_per_token < noise.bits_per_token


@pytest.mark.parametrize("call,message", [
    (lambda m: m.generate(sampler="nope"), "sampling.predictor must be one of"),
    (lambda m: m.generate(sampler="analytic"), "needs a score model"),
    (lambda m: m.infill("no blanks"), "template has no blank"),
    (lambda m: m.infill("a [___:500]"), "the model's length is 128"),
    (lambda m: m.nelbo([""]), "empty text"),
])
def test_bad_arguments_get_one_sentence(model, call, message):
    with pytest.raises(ValueError, match=message) as err:
        call(model)
    assert "\n" not in str(err.value)


def test_the_cli_fills_a_template_into_the_samples_json(tmp_path):
    out = tmp_path / "infill.json"
    run = subprocess.run([sys.executable, "-m", "duolm", "sample", "eval.checkpoint_path=builtin:duo-bigtxt-dcd",
                          "sampling.infill='the [___] sat on the [___:3] mat'", "sampling.num_samples=2",
                          "sampling.steps=4", f"sampling.output={out}", f"run.dir={tmp_path}"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    res = json.loads(out.read_text())
    assert res["template"] == "the [___] sat on the [___:3] mat"
    assert all(s["text"].endswith(" mat") and len(s["spans"]) == 2 for s in res["samples"])


def test_a_text_drops_the_framing_markers_and_shows_a_document_break():
    from duolm.data.tokenizers import CharTokenizer
    from duolm.sampling.generate import DOCUMENT_BREAK, decode_text, documents

    tok = CharTokenizer()
    eos, mask = tok.eos_id, tok.vocab_size  # the absorbing state is one past the tokens
    ids = [eos] + tok.encode("the end") + [eos, eos] + tok.encode("a new") + [mask] + tok.encode_fragment(" one") + [eos]
    assert documents(tok, ids) == ["the end", "a new one"]
    assert decode_text(tok, ids) == "the end" + DOCUMENT_BREAK + "a new one"
    assert decode_text(tok, [eos, eos]) == "" and decode_text(tok, tok.encode("ab")) == "ab"


def test_a_score_says_it_is_a_sum():
    from duolm.app.api import Score

    s = Score(nelbo=20.0, se=0.5, tokens=10)
    assert "summed over 10 tokens" in repr(s) and "2 nats/token" in repr(s)
