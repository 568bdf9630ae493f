"""Nothing a user made is replaced by another job or another model's output (issue: trust)."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from tiny_run import TINY

from duolm.app.cli import main


def folder_hash(folder: Path) -> dict:
    """Every file under `folder` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch, corpus):
    """A fresh folder as the working directory, so the default run.dir (outputs/...) lies in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _common(corpus, tmp_path):
    return [*TINY, "algo=duo_base", "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]


def test_commands_on_another_model_leave_a_run_byte_for_byte_unchanged(workdir, corpus, capsys):
    """A run at the default run.dir, hashed; then every command that reads a model, on other models
    (a built-in one, another run's model, a converted folder), with the same default settings (so
    the same default run.dir): the hashed run is unchanged, and each wrote next to its own model."""
    common = _common(corpus, workdir)
    assert main(["train", "trainer.max_steps=2", *common]) == 0
    mine = workdir / "outputs" / "local-duo_base-demo"
    assert (mine / "model").is_dir()
    before = folder_hash(mine)
    assert main(["train", "trainer.max_steps=2", "run.dir=other", *common]) == 0
    other = workdir / "other" / "model"
    assert main(["convert", f"eval.checkpoint_path={other}", "convert.output=converted", *common]) == 0
    runs = [["sample", "eval.checkpoint_path=builtin:duo-bigtxt-dcd", *common],
            ["sample", f"eval.checkpoint_path={other}", *common],
            ["sample", "eval.checkpoint_path=converted", *common],
            ["eval", f"eval.checkpoint_path={other}", *common],
            ["eval", "eval.checkpoint_path=other/checkpoints/last.ckpt", *common],
            ["eval", f"eval.samples={workdir / 'other' / 'samples.json'}", "eval.judge=null", *common],
            ["distill", f"eval.checkpoint_path={other}", "trainer.max_steps=1", "distill.T=8", *common]]
    for args in runs:
        assert main(args) == 0, args
    assert folder_hash(mine) == before
    assert (workdir / "outputs" / "builtin-duo-bigtxt-dcd-outputs" / "samples.json").is_file()
    # the later sample is written beside the training's samples.json, which it no longer replaces (issue 33)
    assert json.loads((workdir / "other" / "samples-1.json").read_text())["checkpoint"] == str(other)
    assert (workdir / "other" / "samples.json").is_file()
    assert (workdir / "converted-outputs" / "samples.json").is_file()
    assert (workdir / "other" / "eval.json").is_file()
    assert (workdir / "other-dcd" / "model" / "config.json").is_file()
    capsys.readouterr()


def test_distill_gets_its_own_run_and_refuses_its_teachers(workdir, corpus, capsys):
    """The quick start's mistake, replayed: distilling into the teacher's run is refused before
    anything is written, whether run.dir names it or the teacher's checkpoint sits there; the
    default is a new run next to the teacher, whose checkpoint records the job and its teacher."""
    common = _common(corpus, workdir)
    assert main(["train", "trainer.max_steps=2", "run.dir=teacher", *common]) == 0
    teacher = workdir / "teacher"
    before = folder_hash(teacher)
    distill = ["distill", f"eval.checkpoint_path={teacher / 'model'}", "distill.T=8", "trainer.max_steps=2", *common]
    assert main([*distill, "run.dir=teacher"]) == 1
    assert "is the teacher's own run" in capsys.readouterr().err
    # another train run where a distillation would resume: refused by the checkpoint's job record
    assert main(["train", "trainer.max_steps=2", "run.dir=plain", *common]) == 0
    plain_before = folder_hash(workdir / "plain")
    capsys.readouterr()
    assert main([*distill, "run.dir=plain"]) == 1
    err = capsys.readouterr().err
    assert "holds a train run, which this distill of" in err and err.count("\n") == 1
    assert folder_hash(workdir / "plain") == plain_before
    assert main(distill) == 0
    student = workdir / "teacher-dcd"
    ckpt = torch.load(student / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["duolm"]["job"] == {"kind": "distill", "from": str((teacher / "model").resolve())}
    assert json.loads((student / "model" / "config.json").read_text())["job"]["kind"] == "distill"
    assert folder_hash(teacher) == before
    # the same command again resumes its own run (the job and the teacher match)
    assert main([*distill[:-len(common) - 1], "trainer.max_steps=3", *common]) == 0
    assert torch.load(student / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    capsys.readouterr()


def test_where_results_go_for_each_kind_of_model(tmp_path):
    from omegaconf import OmegaConf

    from duolm.app.outputs import distill_run_dir, results_dir

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "folder").mkdir()

    def cfg(path, given=()):
        return OmegaConf.create({"run": {"dir": str(tmp_path / "outputs" / "x")}, "eval": {"checkpoint_path": path},
                                 "given": list(given)})

    assert results_dir(cfg(None)) == tmp_path / "outputs" / "x"
    assert results_dir(cfg(str(tmp_path / "run" / "model"))) == (tmp_path / "run").resolve()
    assert results_dir(cfg(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))) == (tmp_path / "run").resolve()
    assert results_dir(cfg(str(tmp_path / "folder"))) == (tmp_path / "folder-outputs").resolve()
    assert results_dir(cfg("builtin:duo-bigtxt-dcd")) == tmp_path / "outputs" / "builtin-duo-bigtxt-dcd-outputs"
    assert results_dir(cfg("s-sahoo/duo-distilled")) == tmp_path / "outputs" / "s-sahoo--duo-distilled-outputs"
    assert results_dir(cfg("builtin:duo-bigtxt-dcd", given=["run.dir"])) == tmp_path / "outputs" / "x"
    assert distill_run_dir(cfg(str(tmp_path / "run" / "model"))) == (tmp_path / "run-dcd").resolve()
    assert distill_run_dir(cfg("builtin:duo-bigtxt-dcd")) == tmp_path / "outputs" / "builtin-duo-bigtxt-dcd-dcd"
    with pytest.raises(ValueError, match="teacher's own run"):
        distill_run_dir(OmegaConf.create({"run": {"dir": str(tmp_path / "run")}, "given": ["run.dir"],
                                          "eval": {"checkpoint_path": str(tmp_path / "run" / "model")}}))


def test_a_run_is_defined_by_steps_and_the_time_cap_says_when_it_stopped_one(workdir, corpus, capsys):
    """trainer.max_minutes is opt-in (the CPU preset runs to max_steps) and listed in train --help;
    when it stops a run, one sentence says so (steps done of planned, the checkpoint, how to continue)."""
    from duolm.app.config import compose

    assert compose([]).trainer.max_minutes is None
    assert main(["train", "--help"]) == 0
    assert "trainer.max_minutes" in capsys.readouterr().out
    common = _common(corpus, workdir)
    assert main(["train", "trainer.max_steps=100000", "trainer.max_minutes=0.0001", "run.dir=capped", *common]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "stopped by trainer.max_minutes" in x)
    assert "of 100000" in line and "last.ckpt" in line and "rerun the same command" in line
    report = json.loads((workdir / "capped" / "report.json").read_text())
    assert report["train"]["stopped_by"] == "trainer.max_minutes" and report["train"]["steps"] < 100000
