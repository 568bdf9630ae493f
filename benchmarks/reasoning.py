"""The planning experiment of issue 35: AR against MDLM and Duo on 4x4 sudoku and countdown, at equal
network size and equal training compute, after SFT and after RL, at several sampling budgets (9x9 sudoku
too: `--tasks sudoku9`, 20 blanks, length 200).

    python benchmarks/reasoning.py [--out benchmarks/results/reasoning/cpu.json] [--work outputs/reasoning]
                                   [--tasks sudoku4,countdown3] [--methods ar,mdlm,duo] [--sft-steps 800]
                                   [--rl-steps 40] [--quick]

For each task and method, with the same network (a DiT of `--width` x `--blocks`, length 64, dropout
0) and the same optimizer steps and batch:

1. SFT: `duolm train data=<task> algo=<method> ...` (the prompt held clean, the answer learned);
2. held-out exact-match accuracy (the task's verifier, one completion per prompt, standard error) of
   the SFT model: AR with its sampler (temperature 1, KV cache); the diffusion methods with ancestral
   sampling (greedy last step) at several step counts and with confidence decoding (commit the
   argmax of the most confident positions, Fast-dLLM's / Ye et al.'s top-k) at the same counts;
3. RL from that SFT model: `duolm rl ... data=<task>` (GRPO; AR exact log-probabilities, MDLM and Duo
   the ELBO), then the same accuracies.

Resumable: each finished stage is written to --out at once and skipped by a rerun with the same
settings (a row made with other settings is made again; rows of other tasks are kept, so tasks can
be run in separate invocations with their own step counts); a killed SFT or RL run resumes from its
checkpoint (both commands resume from their run folder). The training minutes
of each stage are recorded. A result either way: it reports what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # python benchmarks/reasoning.py
    from provenance import emit, provenance

from duolm.checkpoints.loading import load_pretrained
from duolm.data.tasks import TASKS, task_splits
from duolm.evaluation.verified import verified_accuracy
from duolm.sampling.registry import checked_spec
from duolm.sampling.spec import SamplerSpec

TASK_SETTINGS = {  # name -> (data preset, data.task overrides, model.length: [BOS] prompt answer [EOS] fits)
    "sudoku4": ("sudoku", {"size": 4}, 64),
    "sudoku9": ("sudoku", {"size": 9, "blanks": 20}, 200),
    "countdown3": ("countdown", {"numbers": 3, "max_number": 25}, 64),
    "arithmetic3": ("arithmetic", {"digits": 3, "operation": "+"}, 64),
}


def duolm(*args: str, log: Path) -> float:
    """Run `python -m duolm args` (its output to `log`); the minutes it took."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        done = subprocess.run([sys.executable, "-m", "duolm", *args], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise SystemExit(f"duolm {args[0]} failed (exit {done.returncode}); see {log}")
    return (time.perf_counter() - t0) / 60


def budgets(method: str, steps: list[int]) -> list[dict]:
    """The samplers each model is read with: AR its own; diffusion ancestral and confidence at each step count."""
    if method == "ar":
        return [{"predictor": "ar"}]
    out = [{"predictor": "ancestral", "steps": s, "noise_removal": "greedy"} for s in steps]
    out += [{"predictor": "confidence", "steps": s} for s in steps]
    return out


def accuracies(model_dir: Path, records: list[dict], verify, method: str, steps: list[int], seed: int,
               length: int) -> list[dict]:
    pre = load_pretrained(str(model_dir))
    rows = []
    for b in budgets(method, steps):
        spec = checked_spec(SamplerSpec(**b, eps=pre.method.sampling_eps) if "steps" in b
                            else SamplerSpec(predictor="ar"), pre.method, length)
        res = verified_accuracy(pre.method, pre.backbone, pre.tokenizer, records, verify, replace(spec, prefix=None),
                                length=length, seed=seed)
        rows.append({**b, **{k: res[k] for k in ("accuracy", "se", "n", "seconds")}, "examples": res["examples"][:2]})
        print(f"  {model_dir.parent.name} {b}: {res['accuracy']:.3f} +- {res['se']:.3f}", flush=True)
    return rows


def plot_rewards(result: dict, output: Path) -> Path | None:
    """The RL reward curves of every row (a running mean over 5 steps), one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in result["rows"].values() if "rl" in r})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in result["rows"].values():
            if row["task"] != task or "rl" not in row:
                continue
            steps, rewards = zip(*row["rl"]["reward_curve"])
            smooth = [sum(rewards[max(0, i - 4):i + 1]) / len(rewards[max(0, i - 4):i + 1]) for i in range(len(rewards))]
            ax.plot(steps, smooth, label=row["method"])
        ax.set_title(f"{task}: mean reward of the groups", fontsize=9)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/reasoning/cpu.json")
    ap.add_argument("--work", default="outputs/reasoning")
    ap.add_argument("--tasks", default="sudoku4,countdown3")
    ap.add_argument("--methods", default="ar,mdlm,duo")
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--valid-size", type=int, default=200)
    ap.add_argument("--rl-steps", type=int, default=40)
    ap.add_argument("--rl-prompts", type=int, default=8)
    ap.add_argument("--rl-group", type=int, default=8)
    ap.add_argument("--rl-lr", type=float, default=1e-4)
    ap.add_argument("--sampling-steps", default="4,8,16")
    ap.add_argument("--quick", action="store_true", help="a few steps of everything (checks the script runs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sft_steps, args.rl_steps, args.train_size, args.valid_size = 8, 2, 64, 16
        args.width, args.blocks, args.sampling_steps = 64, 2, "4"
    steps = [int(s) for s in args.sampling_steps.split(",")]
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = json.loads(out.read_text()) if out.is_file() else {"rows": {}}
    settings = {k: getattr(args, k) for k in ("sft_steps", "batch", "width", "blocks", "train_size", "valid_size",
                                              "rl_steps", "rl_prompts", "rl_group", "rl_lr", "sampling_steps")}
    result.update(provenance())
    t_all = time.perf_counter()
    for task in args.tasks.split(","):
        preset, knobs, length = TASK_SETTINGS[task]
        task_keys = [f"data.task.{k}={v}" for k, v in {**knobs, "train_size": args.train_size,
                                                        "valid_size": args.valid_size}.items()]
        _, valid = task_splits(preset, {**knobs, "train_size": args.train_size, "valid_size": args.valid_size})
        verify = TASKS[preset].verify
        for method in args.methods.split(","):
            key = f"{task}/{method}"
            row = result["rows"].get(key, {})
            if row.get("settings") != {**settings, "length": length}:  # not this experiment's: made again
                row = result["rows"][key] = {"task": task, "method": method, "settings": {**settings, "length": length}}
            run = work / f"{task}-{method}"
            log = work / f"{task}-{method}.log"
            net = [f"model.hidden_size={args.width}", f"model.cond_dim={args.width // 2}", f"model.n_blocks={args.blocks}",
                   "model.n_heads=4", f"model.length={length}", "model.dropout=0.0"]
            if "sft" not in row:
                print(f"{key}: SFT ({args.sft_steps} steps)", flush=True)
                minutes = duolm("train", f"data={preset}", f"algo={'duo_cpu' if method == 'duo' else method}",
                                "model=tiny", *net, *task_keys, f"trainer.max_steps={args.sft_steps}",
                                f"loader.global_batch_size={args.batch}", "optim.warmup_steps=50",
                                "trainer.val_check_interval=100000", f"run.dir={run}", "run.final_validation=false",
                                "run.final_samples=false", "trainer.enable_progress_bar=false", log=log)
                row["sft"] = {"minutes": minutes, "steps": args.sft_steps,
                              "accuracy": accuracies(run / "model", valid, verify, method, steps, seed=0,
                                                         length=length)}
                emit(result, out)
            if "rl" not in row and args.rl_steps:
                print(f"{key}: RL ({args.rl_steps} steps)", flush=True)
                minutes = duolm("rl", f"eval.checkpoint_path={run / 'model'}", f"data={preset}", *task_keys,
                                f"rl.steps={args.rl_steps}", f"rl.prompts_per_step={args.rl_prompts}",
                                f"rl.group={args.rl_group}", f"rl.lr={args.rl_lr}", "rl.beta=0.0",
                                f"rl.eval_every={max(1, args.rl_steps // 4)}", f"rl.valid_size={min(64, args.valid_size)}",
                                "sampling.steps=16", "sampling.noise_removal=ancestral",
                                "trainer.enable_progress_bar=false", f"run.dir={run}-rl", log=log)
                history = [json.loads(x) for x in (Path(f"{run}-rl") / "metrics.jsonl").read_text().splitlines()
                           if x.strip()]
                row["rl"] = {"minutes": minutes, "steps": args.rl_steps,
                             "reward_curve": [[h["step"], round(h["reward"], 4)] for h in history if "reward" in h],
                             "accuracy": accuracies(Path(f"{run}-rl") / "model", valid, verify, method, steps,
                                                    seed=0, length=length)}
                emit(result, out)
    result["minutes_this_run"] = (time.perf_counter() - t_all) / 60
    emit(result, out)
    plot_rewards(result, out.with_name(out.stem + "-rewards.png"))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(main())
