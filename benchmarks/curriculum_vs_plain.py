"""Duo with its curriculum against plain uniform-state training, same data, same steps and
wall-clock cap, on this machine; prints JSON (the true validation NELBO of each, in bits per token).

    python benchmarks/curriculum_vs_plain.py [--minutes 9] [--steps 400] [-- extra overrides]

Runs `duolm train` twice (the built-in CPU configuration: algo=duo_cpu, and the same with
algo.curriculum.mode=none), each in its own run directory under --out.
"""
from __future__ import annotations

import sys


import argparse
import json
import subprocess
from pathlib import Path


def run(name: str, overrides: list[str], out: Path) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "duolm", "train", f"run.dir={run_dir}", "run.resume=false",
           "trainer.enable_progress_bar=false", *overrides]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((run_dir / "report.json").read_text())
    v = report["validation"]
    return {"name": name, "steps": report["train"]["steps"], "train_minutes": report["train"]["train_seconds"] / 60,
            "val_nll_nats": v["nll"], "val_nll_se": v["nll_se"], "val_bits_per_token": v["bits_per_token"],
            "unigram_bits_per_token": report["train"]["unigram_bits_per_token"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=9)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="outputs/curriculum-vs-plain")
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    base = [f"trainer.max_minutes={args.minutes}", f"trainer.max_steps={args.steps}", *args.extra]
    out = Path(args.out)
    results = [run("curriculum", base, out), run("plain", ["algo.curriculum.mode=none", *base], out)]
    print(json.dumps({"runs": results,
                      "curriculum_gain_bits": results[1]["val_bits_per_token"] - results[0]["val_bits_per_token"]},
                     indent=1))


if __name__ == "__main__":
    main()
