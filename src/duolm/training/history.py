"""What a run directory keeps across resumes: its fingerprint (is this the same run?) and its
metrics history (appended, never replaced)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from duolm.errors import SettingError

# what a checkpoint's "duolm" entry must match for a run to continue from it, with the key a user changes
FINGERPRINT_KEYS = {"algo": "algo", "model": "model.*", "tokenizer": "data.tokenizer", "length": "model.length",
                    "data": "data"}
# the job that wrote a checkpoint: train (from scratch) or distill (from a teacher); a checkpoint
# from before jobs were recorded was written by `duolm train`
TRAIN_JOB = {"kind": "train", "from": None}


def check_resumable(saved: dict, current: dict, run_dir) -> None:
    """Refuse, in one sentence, to resume a run whose checkpoint was made by another setup or job."""
    job, now = saved.get("job", TRAIN_JOB), current.get("job", TRAIN_JOB)
    if job != now:
        made = f"a {job['kind']} run" + (f" of {job['from']}" if job.get("from") else "")
        this = f"this {now['kind']}" + (f" of {now['from']}" if now.get("from") else "")
        raise SettingError(f"`check_resumable.run_dir`={run_dir} holds {made}, which {this} would overwrite; give this one its own "
                         f"`check_resumable.run_dir` (duolm distill's default is a new folder next to its teacher)")
    diffs = []
    for key, user_key in FINGERPRINT_KEYS.items():
        if key in saved and saved.get(key) != current.get(key):
            a, b = saved.get(key), current.get(key)
            if isinstance(a, dict) and isinstance(b, dict):
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                detail = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:3])
            else:
                detail = f"{a!r} -> {b!r}"
            diffs.append(f"{user_key} ({detail})")
    if diffs:
        raise SettingError(f"`check_resumable.run_dir`={run_dir} holds a run with another setup: {'; '.join(diffs)}; choose a new "
                         f"`check_resumable.run_dir` for this one (or delete that folder to start over)")


def drop_rows_after(metrics_csv: Path, step: int) -> int:
    """Remove the rows logged after `step` (a resumed run logs them again; -1: every row), atomically;
    returns how many were removed."""
    if not metrics_csv.is_file():
        return 0
    with open(metrics_csv, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if (not r.get("step") and step >= 0) or (r.get("step") and int(float(r["step"])) <= step)]
    if len(kept) == len(rows):
        return 0
    tmp = metrics_csv.with_name(f".{metrics_csv.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, metrics_csv)
    return len(rows) - len(kept)


class _AppendingWriter(_ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one appends to it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def log_hparams(self, params) -> None:  # the config is in the checkpoint and config files
        pass


class AppendingCSVLogger(CSVLogger):
    """logs/metrics.csv across resumes: the history of the whole run."""

    @property
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def drop_jsonl_after(path: Path, step: int) -> int:
    """Remove the rows of a metrics JSONL whose `step` is after `step` (a resumed run logs them again;
    -1: every row), atomically; returns how many were removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(kept)


class JsonlHistory(Callback):
    """Appends a module's `last_metrics` (a dict with `step`) to a JSONL file after every training
    batch and every validation (rank 0 only): one line per RL step, one per held-out check."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _append(self, trainer, row: dict) -> None:
        if trainer.global_rank != 0 or not row:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        row = {k: v for k, v in pl_module.last_metrics.items() if not k.startswith("valid_")}
        self._append(trainer, row)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        valid = {k: v for k, v in pl_module.last_metrics.items() if k.startswith("valid_")}
        self._append(trainer, {"step": pl_module.rl_step, **valid} if valid else {})
