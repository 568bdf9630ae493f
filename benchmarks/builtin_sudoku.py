"""The built-in sudoku solver (`builtin:ar-sudoku`): its held-out accuracy as shipped (float16 weights).

    python benchmarks/builtin_sudoku.py [--out benchmarks/results/builtin/ar-sudoku.json]

The model is the planning experiment's best row (benchmarks/reasoning.py, `sudoku4/ar` after SFT:
AR won at equal size and compute), written with `duolm convert ... convert.dtype=float16`. Scored
here on the experiment's 200 held-out 4x4 puzzles (data=sudoku's validation split, seed 1 of the
generator, none of them a training prompt), one sampled answer each, with the sudoku verifier; and
the time one `duolm sample` call takes to print a solved grid.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # python benchmarks/builtin_sudoku.py
    from provenance import emit, provenance

from duolm.checkpoints.loading import load_pretrained
from duolm.data.tasks import TASKS, task_splits
from duolm.evaluation.verified import verified_accuracy
from duolm.sampling.spec import SamplerSpec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/builtin/ar-sudoku.json")
    ap.add_argument("--model", default="builtin:ar-sudoku")
    args = ap.parse_args(argv)
    pre = load_pretrained(args.model)
    _, valid = task_splits("sudoku", {"size": 4, "train_size": 4000, "valid_size": 200})
    acc = verified_accuracy(pre.method, pre.backbone, pre.tokenizer, valid, TASKS["sudoku"].verify,
                            SamplerSpec(predictor="ar"), length=pre.config["length"], seed=0)
    puzzle = valid[0]["prompt"]
    t0 = time.perf_counter()
    shown = subprocess.run([sys.executable, "-m", "duolm", "sample", f"eval.checkpoint_path={args.model}",
                            f'sampling.prefix="{puzzle}"', "sampling.num_samples=1", "sampling.output=/dev/null"],
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    command_seconds = time.perf_counter() - t0
    emit({**provenance(), "model": args.model, "held_out_puzzles": acc["n"], "accuracy": acc["accuracy"],
          "accuracy_se": acc["se"], "sampling_seconds": acc["seconds"], "examples": acc["examples"],
          "sample_command": {"puzzle": puzzle, "printed": shown, "correct": TASKS["sudoku"].verify(
              valid[0], shown.split("=", 1)[1]) >= 1.0, "seconds": command_seconds}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
