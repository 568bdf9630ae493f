"""What a run directory keeps across resumes: its fingerprint (is this the same run?) and its
metrics history (appended, never replaced)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
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
