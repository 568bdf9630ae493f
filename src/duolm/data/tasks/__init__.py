"""Tasks with verifiers, generated here (no download): sudoku, countdown, multi-digit arithmetic.

Each row of TASKS makes instruction records ({'prompt', 'response', ...}: for SFT, and for RL as
prompts with what their verifier needs) from a seed, and scores a completion of a record's prompt
(1.0 right, 0.0 wrong or malformed). `task_splits` gives train and held-out validation records: the
validation records come from another seed, and any whose prompt is also a training prompt is dropped.

    train, valid = task_splits("sudoku", {"size": 4, "blanks": 8, "train_size": 2000, "valid_size": 200})
    TASKS["sudoku"].verify(valid[0], completion)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from duolm.data.tasks import arithmetic, countdown, sudoku
from duolm.errors import SettingError


@dataclass(frozen=True)
class Task:
    records: Callable[..., list[dict]]     # (count, seed, **settings) -> records
    verify: Callable[[dict, str], float]   # (record, completion) -> reward in [0, 1]
    settings: dict                         # its own settings and their defaults


TASKS: dict[str, Task] = {
    "sudoku": Task(sudoku.records, lambda r, c: sudoku.verify(r["puzzle"], c, r["size"]),
                   {"size": 4, "blanks": None}),
    "countdown": Task(countdown.records, lambda r, c: countdown.verify(r["numbers"], r["target"], c),
                      {"numbers": 3, "max_number": 25}),
    "arithmetic": Task(arithmetic.records, lambda r, c: arithmetic.verify(r["answer"], c),
                       {"digits": 3, "operation": "+"}),
}
SPLIT_SETTINGS = {"train_size": 2000, "valid_size": 200, "seed": 0}


def task_splits(name: str, settings: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(train records, held-out validation records) of task `name` with `settings` (its own and SPLIT_SETTINGS)."""
    if name not in TASKS:
        raise SettingError(f"`task_splits.name` must be one of {sorted(TASKS)}, got {name!r}")
    task = TASKS[name]
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(task.settings) - set(SPLIT_SETTINGS))
    if unknown:
        raise SettingError(f"`task_splits.settings`: {unknown[0]!r} is not a setting of {name} (its settings: "
                           f"{', '.join(sorted({**task.settings, **SPLIT_SETTINGS}))})")
    s = {**SPLIT_SETTINGS, **task.settings, **settings}
    own = {k: s[k] for k in task.settings}
    for key in ("train_size", "valid_size"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise SettingError(f"`task_splits.{key}` must be an integer >= 1, got {s[key]!r}")
    train = task.records(s["train_size"], 2 * s["seed"], **own)
    seen = {r["prompt"] for r in train}
    valid = [r for r in task.records(s["valid_size"], 2 * s["seed"] + 1, **own) if r["prompt"] not in seen]
    return train, valid


__all__ = ["SPLIT_SETTINGS", "TASKS", "Task", "task_splits"]
