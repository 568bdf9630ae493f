"""Block diffusion's sample quality where it is exact: MDLM (BD3-LM) and Duo (uniform-state inside
each block) at block sizes 4, 8, 16 and the whole sequence, on a hidden Markov model. Prints and
writes JSON + Markdown.

The HMM of benchmarks/reproduce.py (16 hidden states, 32 symbols, sequences of 64) generates the
data, so each sample's exact NLL is known (forward algorithm), and so is the floor: H(X_1..64)/64.
Every model has the same network and trains for the same number of steps on fresh draws (the
block models' pass reads x_t ⊕ x_0, twice the length); its validation NELBO is the block NELBO.
Each then samples at equal network calls per token: a budget of C denoising calls per sequence
is C * block / 64 calls in each block, its last (noise-removal) step included, so C * block / 64 - 1
ancestral steps (settings under one step are skipped); the cache commits, one per block, are
counted apart (they skip the output layer). Then, on the whole-sequence MDLM, Fast-dLLM's
approximate cache (confidence decoding in generation blocks of 16; no cache, prefix, dual): its
cost in exact NLL against the positions it saves. Reported per setting: the samples' mean exact NLL per token (lower is better;
below the data's own means lost diversity) and their mean unigram entropy.

    python benchmarks/block_quality.py            # the full run (about 40 minutes on 2 CPU cores)
    python benchmarks/block_quality.py --quick    # a few minutes
    python benchmarks/block_quality.py --smoke    # seconds: the pipeline, not the result
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from duolm.sampling.observers import Recorder

try:
    from benchmarks.provenance import provenance
    from benchmarks.reproduce import make_model, quality, train
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import provenance
    from reproduce import make_model, quality, train

from duolm.core.methods import build_method
from duolm.evaluation.hmm import random_hmm
from duolm.evaluation.samples import unigram_entropy
from duolm.sampling import SamplerSpec
from duolm.sampling.confidence import ConfidenceOptions
from duolm.sampling.generate import sample_batch

PRESETS = {
    "full": dict(steps=800, minutes=15, n_samples=512, budgets=[16, 32, 64], hidden=96, blocks=3, batch=64,
                 n_valid=512, sizes=[4, 8, 16, None]),
    "quick": dict(steps=300, minutes=3, n_samples=128, budgets=[16, 64], hidden=64, blocks=2, batch=64,
                  n_valid=256, sizes=[4, 16, None]),
    "smoke": dict(steps=3, minutes=1, n_samples=8, budgets=[32], hidden=32, blocks=1, batch=8, n_valid=16,
                  sizes=[16, None]),
}
ALGOS = ("mdlm", "duo_base")


def label(algo: str, block: int | None) -> str:
    return f"{algo}, {'whole sequence' if block is None else f'blocks of {block}'}"


def draw(method, net, steps: int, n: int, L: int, seed: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    net.eval()
    spec = SamplerSpec(predictor="ancestral", steps=steps, noise_removal="ancestral")
    out, calls = [], {}
    with torch.no_grad():
        for start in range(0, n, 256):
            recorder = Recorder()
            st = recorder.counts
            out.append(sample_batch(method, net, spec, min(256, n - start), L, bos_id=0, generator=g, observer=recorder))
            for k in ("denoiser_calls", "commit_calls"):
                calls[k] = calls.get(k, 0) + st.get(k, 0)
    batches = -(-n // 256)
    return torch.cat(out), {k: v / batches for k, v in calls.items()}


def approximate_cache(method, net, hmm, p, L: int, seed: int) -> list[dict]:
    """Fast-dLLM's approximate cache on the whole-sequence MDLM: confidence decoding in generation
    blocks of 16 at a budget of 32 calls (proposals drawn, not argmax: greedy decoding from an
    all-mask window gives every sample the same text), with no cache, the prefix cache and the dual cache; the
    samples' exact NLL, entropy, calls and query positions (what the cache saves) per sequence."""
    rows = []
    for threshold in (1.0, 0.9, 0.5, 0.3):
        for cache in ("none", "prefix", "dual"):
            spec = SamplerSpec(predictor="confidence", steps=32, options=ConfidenceOptions(
                threshold=threshold, block_length=16, cache=cache, proposal="sample"))
            g = torch.Generator().manual_seed(seed)
            xs, calls, positions = [], 0, 0
            with torch.no_grad():
                for start in range(0, p["n_samples"], 256):
                    recorder = Recorder()
                    st = recorder.counts
                    xs.append(sample_batch(method, net, spec, min(256, p["n_samples"] - start), L, bos_id=0,
                                           generator=g, observer=recorder))
                    calls += st["denoiser_calls"]
                    positions += st.get("query_positions", st["denoiser_calls"] * L)
            batches = -(-p["n_samples"] // 256)
            row = {"threshold": threshold, "cache": cache, "calls": calls / batches,
                   "query_positions_per_token": positions / batches / L, **quality(torch.cat(xs), hmm)}
            rows.append(row)
            print(f"  mdlm whole, confidence {threshold}, blocks of 16, cache {cache:6s}: NLL {row['nll']:.4f} "
                  f"entropy {row['entropy']:.3f} calls {row['calls']:.1f} positions/token "
                  f"{row['query_positions_per_token']:.2f}", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"HMM floor H/L = {result['floor_nats']:.4f} nats/token; the data: NLL {result['data_nll']:.4f}, "
             f"entropy {result['data_entropy']:.3f} ({result['date']}, {result['machine']})", "",
             "| model | validation NELBO | C | steps per block | calls per token (+ commits) | sample NLL | entropy |",
             "|---|---|---|---|---|---|---|"]
    for r in result["samples"]:
        v = result["validation"][r["model"]]
        lines.append(f"| {r['model']} | {v:.4f} | {r['budget']} | {r['steps_per_block']} | "
                     f"{r['calls_per_token']:.3f} (+{r['commits_per_token']:.3f}) | {r['nll']:.4f} ± {r['nll_se']:.4f} | "
                     f"{r['entropy']:.3f} |")
    if result.get("approximate_cache"):
        lines += ["", "Fast-dLLM's approximate cache, whole-sequence MDLM, confidence decoding in generation blocks of "
                  "16, budget 32 calls:", "",
                  "| threshold | cache | calls | query positions per token | sample NLL | entropy |", "|---|---|---|---|---|---|"]
        for r in result["approximate_cache"]:
            lines.append(f"| {r['threshold']} | {r['cache']} | {r['calls']:.1f} | {r['query_positions_per_token']:.2f} | "
                         f"{r['nll']:.4f} ± {r['nll_se']:.4f} | {r['entropy']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/blocks, "
                    "…/blocks-quick, …/blocks-smoke)")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    args = ap.parse_args(argv)
    args.stop_gap = -1.0  # never stop early: every model trains the same number of steps
    preset_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    p = PRESETS[preset_name]
    out = Path(args.out or "benchmarks/results/blocks" + ("" if preset_name == "full" else f"-{preset_name}"))
    (out / "models").mkdir(parents=True, exist_ok=True)
    hmm = random_hmm(16, 32, 0.1, 0.03, seed=args.seed)
    L, V = args.length, hmm.vocab_size
    floor, floor_se = hmm.entropy_per_token(L, n=20_000 if preset_name != "smoke" else 512, seed=args.seed + 1)
    x_valid = hmm.sample(p["n_valid"], L, torch.Generator().manual_seed(args.seed + 2))
    data = hmm.sample(p["n_samples"], L, torch.Generator().manual_seed(args.seed + 3))
    result = {**provenance(None if argv is None else ["benchmarks/block_quality.py", *argv]), "preset": preset_name,
              "config": {**p, **vars(args)}, "floor_nats": floor, "floor_se": floor_se,
              "data_nll": float(hmm.nll_per_token(data).mean()), "data_entropy": float(unigram_entropy(data).mean()),
              "training": {}, "validation": {}, "samples": []}
    print(f"HMM: floor {floor:.4f} nats/token; data NLL {result['data_nll']:.4f} [{preset_name}]", flush=True)
    for algo in ALGOS:
        for block in p["sizes"]:
            name = label(algo, block)
            method = build_method(algo, V, block_size=block)
            torch.manual_seed(args.seed)
            net = make_model(method, p["hidden"], p["blocks"])
            saved = out / "models" / f"{algo}-{block or 'whole'}.pt"
            if saved.exists():  # a rerun reuses what was trained (delete the folder to retrain)
                state = torch.load(saved, weights_only=True)
                net.load_state_dict(state["weights"])
                result["training"][name] = json.loads(state["record"])
            else:
                t0 = time.perf_counter()
                result["training"][name] = train(algo, method, net, hmm, args,
                                                 {"minutes": {algo: p["minutes"]}, "max_steps": {algo: p["steps"]},
                                                  "batch": p["batch"]}, x_valid, floor, log=print)
                torch.save({"weights": net.state_dict(), "record": json.dumps(result["training"][name])}, saved)
                print(f"{name}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            result["validation"][name] = result["training"][name]["curve"][-1]["nelbo"]
            for budget in p["budgets"]:
                steps = budget * (block or L) // L - 1  # the last step (noise removal) is a call too
                if steps < 1:
                    continue
                x, calls = draw(method, net, steps, p["n_samples"], L, args.seed + 5)
                row = {"model": name, "algo": algo, "block_size": block, "budget": budget, "steps_per_block": steps,
                       "calls_per_token": calls.get("denoiser_calls", 0) / L,
                       "commits_per_token": calls.get("commit_calls", 0) / L, **quality(x, hmm)}
                result["samples"].append(row)
                print(f"  {name:28s} C={budget:3d} ({steps} steps/block): NLL {row['nll']:.4f} "
                      f"entropy {row['entropy']:.3f} calls/token {row['calls_per_token']:.3f}", flush=True)
            if algo == "mdlm" and block is None:
                result["approximate_cache"] = approximate_cache(method, net, hmm, p, L, args.seed + 7)
            (out / "block_quality.json").write_text(json.dumps({**result, "partial": True}, indent=1))
    (out / "block_quality.json").write_text(json.dumps(result, indent=1))
    (out / "block_quality.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
