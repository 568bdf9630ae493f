"""What a new user meets in the first hour (issue 33, item 7): a value the shell split, the end of a
short run, samples that never replace earlier ones, one progress bar per generation."""
from __future__ import annotations

import io
import json

import torch
from tiny_run import TINY

from duolm.app.cli import main
from duolm.app.jobs.sample import sample_output


def test_words_the_shell_split_from_a_value_get_one_sentence_with_the_quoting(capsys):
    assert main(["sample", "sampling.prefix=the", "old", "man"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("duolm: config error: sampling.prefix: 'old man' arrived as separate words after "
                   "sampling.prefix=the (the shell splits an unquoted value at its spaces); quote the whole value: "
                   "\"sampling.prefix=the old man\"")
    assert main(["train", "oops"]) == 2
    assert "'oops' is not key=value" in capsys.readouterr().err


def test_a_later_sample_keeps_the_earlier_samples(tmp_path):
    assert sample_output(None, tmp_path) == (str(tmp_path / "samples.json"), None)
    (tmp_path / "samples.json").write_text("{}")
    assert sample_output(None, tmp_path) == (str(tmp_path / "samples-1.json"), tmp_path / "samples.json")
    (tmp_path / "samples-1.json").write_text("{}")
    assert sample_output(None, tmp_path)[0] == str(tmp_path / "samples-2.json")
    assert sample_output(str(tmp_path / "samples.json"), tmp_path) == (str(tmp_path / "samples.json"), None)


def test_a_short_run_reports_briefly_and_the_report_can_be_skipped(tmp_path, corpus, capsys):
    short = [a for a in TINY if not a.startswith(("eval.max_batches", "sampling.num_samples", "sampling.steps"))]
    args = [*short, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}", "trainer.max_steps=2"]
    assert main(["train", *args, f"run.dir={tmp_path / 'a'}"]) == 0
    out = capsys.readouterr().out
    assert ("a short run (2 < 100 steps): its report uses eval.max_batches=16 sampling.num_samples=2 "
            "sampling.steps=16") in out
    samples = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert samples["num_samples"] == 2 and samples["steps"] == 16
    assert "validation" in json.loads((tmp_path / "a" / "report.json").read_text())
    assert main(["train", *args, f"run.dir={tmp_path / 'b'}", "run.final_validation=false",
                 "run.final_samples=false", "sampling.steps=8"]) == 0
    out = capsys.readouterr().out
    assert "sampling.steps" not in out.split("a short run")[1].split("\n")[0]  # given: not replaced
    assert "validation" not in json.loads((tmp_path / "b" / "report.json").read_text())
    assert not (tmp_path / "b" / "samples.json").exists()


def test_block_sampling_draws_one_bar_for_the_whole_generation(monkeypatch):
    """Before: one progress bar per block (32 lines for 512 tokens in blocks of 16)."""
    from duolm.core.methods import build_method
    from duolm.io import progress as progress_module
    from duolm.models.dit import DiT, DiTConfig
    from duolm.sampling import SamplerSpec
    from duolm.sampling.blocks import block_sample

    log = io.StringIO()
    real = progress_module.progress_bar
    monkeypatch.setattr("duolm.sampling.blocks.progress_bar", lambda *a, **k: real(*a, **{**k, "stream": log}))
    method = build_method("mdlm", 7, block_size=4)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=16, cond_dim=8, n_blocks=1, n_heads=2))
    x = block_sample(method, net, SamplerSpec("ancestral", steps=2), 2, 128, progress=True,
                     generator=torch.Generator().manual_seed(0))
    lines = [line for line in log.getvalue().splitlines() if line]
    assert x.shape == (2, 128) and 1 <= len(lines) <= 11, lines  # 32 blocks: a line per 10% at most
    assert lines[-1].startswith("sampling: 32/32 block")
