"""Sampling speed on this machine; prints JSON.

    python benchmarks/sampling.py [--models tiny small] [--steps 4 16 64 256 1024] [--length 128]

For each model (untrained weights: speed does not depend on them; GPT-2 vocabulary):
tokens per second and seconds per sample of Duo's ancestral sampler against the
number of steps, MDLM's cached sampler against the uncached one at the same steps,
and AR sampling with and without its key-value cache.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from duolm.config import compose_components
from duolm.sampling_job import SamplerSpec, sample_batch
from duolm.models.dit import DiT


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", nargs="+", type=int, default=[4, 16, 64, 256, 1024])
    ap.add_argument("--max-steps-small", type=int, default=64, help="cap on steps for the small model (CPU time)")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50257)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"length": args.length, "batch": args.batch, "vocab": args.vocab, "threads": torch.get_num_threads(),
               "models": []}
    for model in args.models:
        entry = {"model": model, "duo_ancestral": [], "mdlm": [], "ar": {}}
        for algo in ("duo", "mdlm", "ar"):
            cfg, parts = compose_components([f"model={model}", f"algo={algo}", f"model.length={args.length}", "model.dropout=0.0"])
            method = parts.method(args.vocab)
            net = DiT(parts.backbone_config(method)).eval()
            entry["parameters"] = net.num_parameters()
            steps_list = [s for s in args.steps if model != "small" or s <= args.max_steps_small]
            if algo == "duo":
                for steps in steps_list:
                    spec = SamplerSpec(predictor="ancestral", steps=steps, noise_removal="greedy")
                    dt, _ = timed(lambda: sample_batch(method, net, spec, args.batch, args.length, bos_id=0))
                    entry["duo_ancestral"].append({"steps": steps, "seconds": dt,
                                                   "seconds_per_sample": dt / args.batch,
                                                   "tokens_per_second": args.batch * args.length / dt})
            elif algo == "mdlm":
                for steps in steps_list:
                    row = {"steps": steps}
                    for pred in ("ancestral", "ancestral_cache"):
                        spec = SamplerSpec(predictor=pred, steps=steps, noise_removal="greedy")
                        st = {}
                        dt, _ = timed(lambda: sample_batch(method, net, spec, args.batch, args.length, bos_id=0,
                                                           stats=st))
                        row[pred] = {"seconds": dt, "tokens_per_second": args.batch * args.length / dt, **st}
                    row["cache_speedup"] = row["ancestral"]["seconds"] / row["ancestral_cache"]["seconds"]
                    entry["mdlm"].append(row)
            else:
                for use_cache in (True, False):
                    from duolm.sampling import ar_sample

                    dt, _ = timed(lambda: ar_sample(net, args.batch, args.length, 0, use_cache=use_cache))
                    entry["ar"]["with_cache" if use_cache else "without_cache"] = {
                        "seconds": dt, "tokens_per_second": args.batch * args.length / dt}
                entry["ar"]["cache_speedup"] = entry["ar"]["without_cache"]["seconds"] / entry["ar"]["with_cache"][
                    "seconds"]
        results["models"].append(entry)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
