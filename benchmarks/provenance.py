"""Where a benchmark's figures came from: the date, the machine, the command and the code's commit.

Every results JSON carries these fields so a figure quoted in the README can be traced to the run that
made it (tests/test_readme_figures.py reads them). Imported both as `benchmarks.provenance` (python -m
benchmarks.x) and as `provenance` (python benchmarks/x.py puts this folder on the path).
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def machine() -> str:
    """One line a reader can compare across runs: cores, architecture and the accelerator if any."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cores}-core {platform.machine()} CPU ({platform.system()})"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def commit() -> str | None:
    """The checkout's commit (with '+changes' when the work tree differs), or None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "")


def provenance(argv: list[str] | None = None, **extra) -> dict:
    """The fields every results JSON starts with; extra ones (say, what else loaded the machine) are kept."""
    args = list(sys.argv if argv is None else argv)
    root = Path(__file__).resolve().parents[1]
    if args and Path(args[0]).is_absolute() and Path(args[0]).resolve().is_relative_to(root):
        args[0] = str(Path(args[0]).resolve().relative_to(root))  # the same command on every checkout
    return {"date": datetime.date.today().isoformat(), "machine": machine(),
            "command": "python " + " ".join(shlex.quote(a) for a in args), "commit": commit(), **extra}


def emit(result: dict, out: str | Path | None = None) -> None:
    """Print the results JSON and, with out, write it there too (the file the README cites)."""
    import json

    text = json.dumps(result, indent=1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)
