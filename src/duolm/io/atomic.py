"""Atomic file writes: a temporary file in the same folder, then a rename, so readers (and a
resumed run) never see half a file, and a failed write leaves nothing behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temporary file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a run's files are not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_torch_save(obj, path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(obj, path) -> Path:
    """Write a JSON file atomically (a reader never sees half a file): results, reports, metrics."""
    return atomic_write_text(path, json.dumps(obj, indent=1))


@contextlib.contextmanager
def atomic_directory(path) -> Iterator[Path]:
    """Fill the yielded temporary folder, then it replaces `path` (an old one is moved aside first
    and removed after); on an error nothing at `path` changes and the temporary folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a model folder is not
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
