"""Where a command writes: into its own run, or next to the model it read, never into another's.

`duolm train` writes into run.dir. A command that reads a model (`sample`, `eval`, `lm-eval`)
writes next to that model: into the run that made it (a run's `model/` folder or one of its
checkpoints), else into a folder named after it (`<folder>-outputs` beside a local folder, or
`outputs/builtin-<name>` / `outputs/<owner>--<name>` for a built-in or hub model). `duolm distill`
trains a new model, so it gets a new run named after its teacher (`<teacher's run>-dcd`), and a
run.dir that is the teacher's own is refused. A run.dir given on the command line always wins.
"""
from __future__ import annotations

from pathlib import Path

from duolm.checkpoints.loading import BUILTIN_PREFIX


def _given(cfg, key: str) -> bool:
    return key in set(cfg.get("given") or [])


def _local(path) -> Path | None:
    """The model at `path` as an absolute local path (None: a built-in name or a hub id)."""
    p = Path(str(path)).expanduser()
    return p.resolve() if not str(path).startswith(BUILTIN_PREFIX) and p.exists() else None


def run_of(path) -> Path | None:
    """The run folder a local model belongs to: the parent of a run's `model/` folder, or of the
    `checkpoints/` folder holding a .ckpt (None: not inside a run)."""
    p = Path(path).expanduser().resolve()
    if p.is_dir() and p.name == "model" and (p.parent / "checkpoints").is_dir():
        return p.parent
    if p.is_file() and p.parent.name == "checkpoints":
        return p.parent.parent
    return None


def model_reference(path: str) -> str:
    """A model's reference as a checkpoint records it: a local path made absolute, a built-in name or
    a hub id as written."""
    return str(_local(path) or path)


def _named_after(cfg, path: str, suffix: str) -> Path:
    """The folder named after the model at `path`: beside a local folder or file, else under the
    folder that holds the default runs (outputs/)."""
    base = Path(str(cfg.run.dir)).expanduser().parent
    if str(path).startswith(BUILTIN_PREFIX):
        return base / f"builtin-{str(path)[len(BUILTIN_PREFIX):]}{suffix}"
    p = _local(path)
    if p is not None:
        return p.parent / f"{p.stem}{suffix}"
    return base / f"{str(path).strip('/').replace('/', '--')}{suffix}"  # a hub id


def results_dir(cfg) -> Path:
    """The folder `sample`, `eval` and `lm-eval` write their results in."""
    path = cfg.eval.get("checkpoint_path")
    if not path or _given(cfg, "run.dir"):
        return Path(str(cfg.run.dir))
    p = _local(path)
    run = run_of(p) if p is not None else None
    return run if run is not None else _named_after(cfg, str(path), "-outputs")


def new_run_dir(cfg, suffix: str, command: str, role: str) -> Path:
    """The run folder of a command that makes a new model from eval.checkpoint_path (`duolm distill`:
    suffix -dcd, role teacher; `duolm rl`: -rl, policy): run.dir when given, else the model's run
    (or name) with the suffix. Refused, in one sentence, when it is the model's own run."""
    source = str(cfg.eval.checkpoint_path)
    p = _local(source)
    source_run = run_of(p) if p is not None else None
    if _given(cfg, "run.dir"):
        run = Path(str(cfg.run.dir)).expanduser()
    elif source_run is not None:
        run = source_run.parent / f"{source_run.name}{suffix}"
    else:
        run = _named_after(cfg, source, suffix)
    resolved = run.resolve()
    if p is not None and (resolved == source_run or resolved / "model" == p or resolved == p):
        raise ValueError(f"run.dir={run} is the {role}'s own run; {command} writes a new model, so give it "
                         f"another run.dir (the default is {(source_run or p).name}{suffix} next to the {role})")
    return run


def distill_run_dir(cfg) -> Path:
    """The run folder of `duolm distill` (teacher: eval.checkpoint_path): `<teacher's run>-dcd`."""
    return new_run_dir(cfg, "-dcd", "duolm distill", "teacher")
