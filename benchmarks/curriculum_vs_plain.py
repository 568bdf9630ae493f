"""The quick start's run (Duo with its curriculum) against plain uniform-state training, same data and
same steps, on this machine; prints JSON (the true validation NELBO of each, in bits per token).

    python benchmarks/curriculum_vs_plain.py [--steps 400] [--minutes M] [--json FILE] [-- extra overrides]

Runs `duolm train` twice (the quick start's configuration: algo=duo_cpu, and the same with
algo.curriculum.mode=none), each in its own run directory under --out. Runs are defined by steps;
--minutes adds trainer.max_minutes as a cap (the JSON then says whether it stopped a run).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance


def run(name: str, overrides: list[str], out: Path) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "duolm", "train", f"run.dir={run_dir}", "run.resume=false",
           "trainer.enable_progress_bar=false", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((run_dir / "report.json").read_text())
    v = report["validation"]
    return {"name": name, "steps": report["train"]["steps"], "train_minutes": report["train"]["train_seconds"] / 60,
            "val_nll_nats": v["nll"], "val_nll_se": v["nll_se"], "val_bits_per_token": v["bits_per_token"],
            "unigram_bits_per_token": report["train"]["unigram_bits_per_token"],
            "stopped_by": report["train"].get("stopped_by")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=None, help="trainer.max_minutes (default: no cap)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="outputs/curriculum-vs-plain")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    base = [*([f"trainer.max_minutes={args.minutes}"] if args.minutes else []), f"trainer.max_steps={args.steps}",
            *args.extra]
    out = Path(args.out)
    results = [run("curriculum", base, out), run("plain", ["algo.curriculum.mode=none", *base], out)]
    emit({**provenance(), "runs": results,
          "curriculum_gain_bits": results[1]["val_bits_per_token"] - results[0]["val_bits_per_token"]}, args.json)


if __name__ == "__main__":
    main()
