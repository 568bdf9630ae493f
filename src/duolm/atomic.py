"""Atomic file writes: a temporary file in the same folder, then a rename, so readers (and a
resumed run) never see half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
