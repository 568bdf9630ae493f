"""Bad input from a user ends in one sentence naming the file or key, a non-zero exit, no traceback,
and nothing partial left behind (issue 13's probes)."""
import json

import pytest
from tiny_run import TINY

from duolm.app.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def probe_files(tmp_path):
    (tmp_path / "bare.jsonl").write_text('"just a string"\n')
    (tmp_path / "null.jsonl").write_text('{"text": null}\n')
    (tmp_path / "afile").write_text("x")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "seqs.ids").write_text("1 2 3 4 5 6 7 8 9\n\n1 2 999 4\n" + "1 2 3 4 5 6 7 8\n" * 30)
    return tmp_path


@pytest.mark.parametrize("args,code,needle", [
    (["train", "data=local", "data.path={t}/bare.jsonl"], 1, "bare.jsonl:1: expected a JSON object with a 'text' field"),
    (["train", "data=local", "data.path={t}/null.jsonl"], 1, "null.jsonl:1: the 'text' field is null, not text"),
    (["train", "data=local", "data.path={t}/bare.jsonl", "data.valid_fraction=0"], 2,
     "data.valid_fraction must lie in (0, 1), got 0"),
    (["train", "run.dir={t}/afile"], 2, "run.dir: {t}/afile is a file"),
    (["sample", "sampling.output={t}/outdir"], 2, "sampling.output: {t}/outdir is a folder"),
    (["train", "data=local", "data.path={t}/seqs.ids"], 1, "seqs.ids:3: token id 999, outside the vocabulary [0, 28)"),
    (["train", "hydra.run.dir={t}/x"], 2, "hydra.run.dir: duolm does not use Hydra's own settings; the run folder is run.dir"),
])
def test_bad_input_is_one_sentence(tmp_path, capsys, args, code, needle):
    t = probe_files(tmp_path)
    args = [a.format(t=t) for a in args] + TINY + [f"data.cache_dir={t / 'cache'}"]
    got, err = run_cli(capsys, *args)
    assert got == code and needle.format(t=t) in err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert not list(t.glob("**/*.tmp"))


def _model(tmp_path, corpus, capsys):
    args = [*TINY, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}",
            f"run.dir={tmp_path / 'run'}", "trainer.max_steps=1"]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    return tmp_path / "run" / "model"


def test_broken_model_folders_are_one_sentence(tmp_path, corpus, capsys):
    model = _model(tmp_path, corpus, capsys)
    cfg = json.loads((model / "config.json").read_text())
    broken = dict(cfg)
    broken["model"] = {**cfg["model"], "hidden_size": cfg["model"]["hidden_size"] * 2,
                       "cond_dim": cfg["model"]["cond_dim"]}
    (model / "config.json").write_text(json.dumps(broken))
    code, err = run_cli(capsys, "sample", f"eval.checkpoint_path={model}", *TINY)
    assert code == 1 and "do not have the shapes config.json describes" in err and "Traceback" not in err
    del broken["tokenizer"]
    broken["model"] = cfg["model"]
    (model / "config.json").write_text(json.dumps(broken))
    code, err = run_cli(capsys, "sample", f"eval.checkpoint_path={model}", *TINY)
    assert code == 1 and "no 'tokenizer' entry" in err


def test_an_unexpected_exception_names_itself_and_points_to_debug(monkeypatch, capsys):
    import duolm.app.jobs.data

    def boom(cfg, parts):
        raise AttributeError("'NoneType' object has no attribute 'x'")

    monkeypatch.setattr(duolm.app.jobs.data, "cmd_data", boom)
    code, err = run_cli(capsys, "data")
    assert code == 1 and "AttributeError" in err and "DUOLM_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("DUOLM_DEBUG", "1")
    with pytest.raises(AttributeError):
        main(["data"])


def _snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_resuming_with_another_model_or_corpus_is_refused_and_touches_nothing(tmp_path, corpus, capsys):
    args = [*TINY, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}",
            f"run.dir={tmp_path / 'run'}", "trainer.max_steps=2", "logging.csv=true"]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    before = _snapshot(tmp_path / "run")
    code, err = run_cli(capsys, "train", *args, "model.hidden_size=64")
    assert code == 1 and "holds a run with another setup: model.* (hidden_size 32 -> 64)" in err
    assert "choose a new run.dir" in err and "Traceback" not in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("a different corpus entirely " * 200)
    (other / "b.txt").write_text("with its own words and documents " * 200)
    code, err = run_cli(capsys, "train", *[a for a in args if not a.startswith("data.path=")], f"data.path={other}")
    assert code == 1 and "data (store" in err
    assert _snapshot(tmp_path / "run") == before  # the run folder is untouched


def test_the_metrics_history_grows_across_a_resume(tmp_path, corpus, capsys):
    import csv

    args = [*TINY, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}",
            f"run.dir={tmp_path / 'run'}", "logging.csv=true", "trainer.log_every_n_steps=1", "run.checkpoint_every=1"]
    assert main(["train", *args, "trainer.max_steps=3"]) == 0
    assert main(["train", *args, "trainer.max_steps=6"]) == 0
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        steps = sorted({int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")})
    assert steps[0] <= 1 and steps[-1] >= 4 and len(steps) >= 5, steps  # the first run's rows are still there


def test_ctrl_c_writes_a_checkpoint_and_a_rerun_resumes(tmp_path, corpus):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    run = tmp_path / "run"
    args = [sys.executable, "-m", "duolm", "train", *TINY, "data=local", f"data.path={corpus}",
            f"data.cache_dir={tmp_path / 'c'}", f"run.dir={run}", "run.checkpoint_every=100000",
            "trainer.max_steps=100000", "trainer.max_minutes=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:  # the start-up line: the handler is in place
        line = proc.stdout.readline()
        if line.startswith("duolm:"):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun the same command to resume" in err and "Traceback" not in err
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 1  # before the first periodic checkpoint (100,000), yet nothing is lost
    again = subprocess.run(args[:-2] + [f"trainer.max_steps={step + 2}"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in again.stdout
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2


def test_a_second_ctrl_c_stops_at_once_in_one_sentence_and_the_history_stays_consistent(tmp_path, corpus):
    """Two Ctrl-Cs: exit 130 with one sentence saying no checkpoint was written (before, Lightning
    exited 1 in silence); the rerun starts at step 0 and drops the rows the stopped run logged, so
    logs/metrics.csv never holds a step twice."""
    import csv
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    # a network whose steps take long enough for the second Ctrl-C to land inside one
    tiny = [a for a in TINY if a != "logging.csv=false" and not a.startswith(("model.hidden_size", "model.length",
                                                                              "loader.global_batch_size"))]
    tiny += ["model.hidden_size=256", "model.length=128", "loader.global_batch_size=64"]
    args = [sys.executable, "-m", "duolm", "train", *tiny, "data=local", f"data.path={corpus}",
            f"data.cache_dir={tmp_path / 'c'}", f"run.dir={run}", "run.checkpoint_every=100000",
            "trainer.log_every_n_steps=1", "trainer.max_steps=100000", "trainer.max_minutes=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if proc.stdout.readline().startswith("duolm:"):
            break
    metrics = run / "logs" / "metrics.csv"
    while proc.poll() is None and time.time() < deadline and not (metrics.is_file() and
                                                                   len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    first = proc.stderr.readline()  # the handler's line: the step is still running (steps of ~0.1 s here)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = first + err
    assert proc.returncode == 130, err[-2000:]
    assert "stopped at once (a second Ctrl-C)" in err and "a rerun starts at step 0" in err, err[-2000:]
    assert "Traceback" not in err and not (run / "checkpoints" / "last.ckpt").exists()
    logged = len(metrics.read_text().splitlines()) - 1
    assert logged >= 2
    again = subprocess.run(args[:-2] + ["trainer.max_steps=2"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{logged} rows an earlier run logged without a checkpoint are dropped" in again.stdout
    steps = [int(float(r["step"])) for r in csv.DictReader(open(metrics)) if r.get("step") and r.get("train/loss")]
    assert steps and len(steps) == len(set(steps)) and max(steps) <= 2, steps


def test_sampler_options_are_checked_against_the_loaded_model(tmp_path, corpus, capsys):
    base = [*TINY, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}", "trainer.max_steps=1"]
    assert main(["train", *base, "algo=mdlm", f"run.dir={tmp_path / 'mdlm'}"]) == 0
    assert main(["train", *base, "algo=duo", f"run.dir={tmp_path / 'duo'}"]) == 0
    capsys.readouterr()
    mdlm, duo = tmp_path / "mdlm" / "model", tmp_path / "duo" / "model"
    out = tmp_path / "s.json"
    # a 16-token model extends to 40 tokens (the default config's length, 128, is not the model's)
    assert main(["sample", f"eval.checkpoint_path={mdlm}", "sampling.total_length=40", "sampling.stride=8",
                 f"sampling.output={out}", "sampling.num_samples=1", "sampling.steps=2"]) == 0
    # MDLM's cache on an MDLM checkpoint, without typing algo=mdlm
    assert main(["sample", f"eval.checkpoint_path={mdlm}", "sampling.predictor=ancestral_cache",
                 f"sampling.output={out}", "sampling.num_samples=1", "sampling.steps=2"]) == 0
    # duo and duo_base are one model
    assert main(["sample", f"eval.checkpoint_path={duo}", "algo=duo_base", f"sampling.output={out}",
                 "sampling.num_samples=1", "sampling.steps=2"]) == 0
    capsys.readouterr()
    # a sampler's settings are checked whether it samples or not (issue 33 names this change: they
    # passed unchecked before), and one that cannot apply to the chosen sampler says so
    code, err = run_cli(capsys, "sample", f"eval.checkpoint_path={duo}", "sampling.psi.middle_mode=nonsense",
                        f"sampling.output={out}")
    assert code == 2 and "sampling.psi mode 'nonsense'" in err
    code, err = run_cli(capsys, "sample", f"eval.checkpoint_path={duo}", "sampling.psi.middle_mode=pure-pc",
                        f"sampling.output={out}")
    assert code == 2 and "sampling.psi.middle_mode applies to sampling.predictor=psi, not auto" in err
    code, err = run_cli(capsys, "sample", f"eval.checkpoint_path={duo}", "sampling.predictor=ancestral_cache",
                        f"sampling.output={out}")
    assert code == 2 and "only valid for a model without time conditioning" in err and "is duo, length 16" in err
    code, err = run_cli(capsys, "sample", f"eval.checkpoint_path={duo}", "sampling.total_length=10",
                        f"sampling.output={out}")
    assert code == 2 and "sampling.total_length (10) must be >= model.length (16)" in err


def test_run_files_get_ordinary_permissions(tmp_path, corpus):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        args = [*TINY, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'c'}",
                f"run.dir={tmp_path / 'run'}", "trainer.max_steps=1"]
        assert main(["train", *args]) == 0
    finally:
        os.umask(umask)
    for f in [tmp_path / "run" / "samples.json", tmp_path / "run" / "checkpoints" / "last.ckpt",
              *(tmp_path / "c").rglob("tokens.bin")]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


@pytest.mark.parametrize("command", ["train", "sample", "eval", "distill", "convert", "data", "plot", "config"])
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: duolm {command}") and "examples:" in out and "algo      ar, d3pm" in out


@pytest.mark.parametrize("args,needle", [
    (["algo=sedd", "algo.block_size=16"],
     "algo.block_size is for algo.name in ['mdlm', 'duo_base', 'duo']; block diffusion of sedd is not implemented"),
    (["algo=duo", "algo.block_size=16"], "algo.block_size needs algo.curriculum.mode=none"),
    (["algo=mdlm", "algo.block_size=0"], "algo.block_size must be null or an integer >= 1, got 0"),
    (["algo=mdlm", "algo.block_size=24"], "algo.block_size"),
    (["algo=mdlm", "algo.clip_min=0.3"], "algo.clip_min and algo.clip_max are set together"),
    (["algo=mdlm", "algo.clip_min=0.8", "algo.clip_max=0.3"],
     "algo.clip_min and algo.clip_max must satisfy 0 < clip_min < clip_max <= 1, got 0.8 and 0.3"),
    (["algo=mdlm", "algo.clip_min=0.3", "algo.clip_max=1.5"], "0 < clip_min < clip_max <= 1"),
    (["algo=duo", "algo.clip_min=0.3", "algo.clip_max=0.8"], "algo.clip_min/clip_max need algo.curriculum.mode=none"),
    (["algo=ar", "algo.clip_min=0.3", "algo.clip_max=0.8"], "algo.clip_min is not a known key"),
    (["sampling.predictor=confidence", "sampling.confidence.threshold=2"],
     "sampling.confidence.threshold must be a probability in [0, 1], got 2"),
    (["sampling.predictor=confidence", "sampling.confidence.proposal=beam"],
     "sampling.confidence.proposal must be one of ['greedy', 'sample'], got 'beam'"),
])
def test_block_and_confidence_settings_are_one_sentence(capsys, args, needle):
    """Block diffusion's and confidence decoding's settings are checked before any work (no braces
    left unformatted in the sentence)."""
    got, err = run_cli(capsys, "config", *args)
    assert got == 2 and needle in err and "{" not in err and len(err.splitlines()) == 1, err
