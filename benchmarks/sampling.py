"""Sampling time: the network's share against the sampler's own math; prints JSON.

    python benchmarks/sampling.py [--models tiny] [--steps 16 256] [--length 64] [--cache-steps 1024] [--out FILE]

Untrained weights with a random output layer (speed does not depend on the weights; the random
head makes the predictions non-trivial), GPT-2 vocabulary, one sequence of `length` tokens,
float64 draws. Every denoiser call is timed inside the backbone, so each run reports

- ``network_seconds``: the backbone's forward passes alone, and ``calls``;
- ``math_seconds`` = total - network: everything else, the parameterisation (log-softmax),
  the step and the draws; ``math_fraction`` = math / network;

for Duo ancestral, MDLM ancestral and MDLM with its cache (first-hitting times), and, as the
baseline from this same run, the former dense step (`dense_step_sample` below: the whole
(B, L, K) posterior in float64 and an exponential race over it at every step). The MDLM cache
is also run at `--cache-steps` steps against the uncached sampler (``cache_speedup``).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance

from duolm.app.config import compose_components
from duolm.models.dit import DiT
from duolm.sampling import SamplerSpec, SamplingModel
from duolm.sampling.categorical import race_categorical
from duolm.sampling.generate import sample_batch
from duolm.sampling.grids import linear_grid


class TimedBackbone(torch.nn.Module):
    """The backbone, with the time spent in its forward passes counted."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config = net, net.config
        self.seconds, self.calls = 0.0, 0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.net(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


@torch.no_grad()
def dense_step_sample(model: SamplingModel, steps: int, shape, generator=None):
    """The former sampler step (the baseline): float64 (B, L, K) posterior and a race over it."""
    process, schedule = model.process, model.schedule
    grid = linear_grid(steps, 1e-3, final_zero=True)
    x = process.prior_sample(shape, generator=generator)
    for i in range(steps + 1):
        t, s = grid[i], grid[i + 1]
        alpha_t = schedule(t.reshape(1)).alpha.expand(shape[0])
        p = model.denoiser(x, alpha_t).double().exp()
        if i == steps:  # the greedy tail
            x = torch.where(x == getattr(process, "mask_id", -1), p.argmax(-1), x) \
                if process.kind == "absorbing" else p.argmax(-1)
            break
        alpha_s = schedule(s.reshape(1)).alpha.expand(shape[0])
        x = race_categorical(process.posterior(p, x, alpha_s.double(), alpha_t.double()), generator)
    return x


def timed(net: TimedBackbone, fn) -> dict:
    net.seconds, net.calls = 0.0, 0
    t0 = time.perf_counter()
    fn()
    total = time.perf_counter() - t0
    return {"seconds": total, "network_seconds": net.seconds, "calls": net.calls,
            "math_seconds": total - net.seconds, "math_fraction": (total - net.seconds) / max(net.seconds, 1e-9)}


def bench_model(model: str, steps_list, length: int, vocab: int, cache_steps: int) -> dict:
    entry = {"model": model, "runs": []}
    for algo in ("duo", "mdlm"):
        _, parts = compose_components([f"model={model}", f"algo={algo}", f"model.length={length}",
                                       "model.dropout=0.0"])
        method = parts.method(vocab)
        torch.manual_seed(0)
        net = DiT(parts.backbone_config(method)).eval()
        with torch.no_grad():
            net.output_layer.linear.weight.normal_(0, 0.5)
        entry["parameters"] = net.num_parameters()
        timed_net = TimedBackbone(net)
        sm = SamplingModel.from_method(method, timed_net)
        predictors = ["ancestral"] if algo == "duo" else ["ancestral", "ancestral_cache"]
        sample_batch(method, timed_net, SamplerSpec(steps=2), 1, length, bos_id=0)  # warm-up
        for steps in sorted(set(steps_list) | ({cache_steps} if algo == "mdlm" and cache_steps else set())):
            for pred in predictors + ["dense-step baseline"]:
                if steps == cache_steps and steps not in steps_list and pred == "dense-step baseline":
                    continue
                g = torch.Generator().manual_seed(0)
                if pred == "dense-step baseline":
                    row = timed(timed_net, lambda: dense_step_sample(sm, steps, (1, length), g))
                else:
                    spec = SamplerSpec(predictor=pred, steps=steps, noise_removal="greedy")
                    row = timed(timed_net, lambda: sample_batch(method, timed_net, spec, 1, length, bos_id=0,
                                                                generator=g))
                row.update(algo=algo, sampler=pred, steps=steps)
                entry["runs"].append(row)
                print(f"{model} {algo} {pred:20s} {steps:5d} steps: {row['seconds']:.2f} s, network "
                      f"{row['network_seconds']:.2f} s ({row['calls']} calls), math {row['math_fraction']:.2f} "
                      f"of network", file=sys.stderr)
    summary = {}
    for r in entry["runs"]:
        summary[f"{r['algo']} {r['sampler']} {r['steps']}: math / network"] = r["math_fraction"]
    for steps in {r["steps"] for r in entry["runs"] if r["algo"] == "mdlm"}:
        rows = {r["sampler"]: r for r in entry["runs"] if r["algo"] == "mdlm" and r["steps"] == steps}
        if "ancestral" in rows and "ancestral_cache" in rows:
            summary[f"mdlm cache speedup at {steps} steps"] = rows["ancestral"]["seconds"] / rows["ancestral_cache"][
                "seconds"]
    for algo in ("duo", "mdlm"):
        for steps in steps_list:
            rows = {r["sampler"]: r for r in entry["runs"] if r["algo"] == algo and r["steps"] == steps}
            if "ancestral" in rows and "dense-step baseline" in rows:
                summary[f"{algo} ancestral {steps}: speedup over the dense step"] = \
                    rows["dense-step baseline"]["seconds"] / rows["ancestral"]["seconds"]
    entry["summary"] = summary
    return entry


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny"])
    ap.add_argument("--steps", nargs="+", type=int, default=[16, 256])
    ap.add_argument("--cache-steps", type=int, default=1024, help="steps for the MDLM cache comparison (0: skip)")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    result = {**provenance(), "length": args.length, "batch": 1, "vocab": args.vocab, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "models": [bench_model(m, args.steps, args.length, args.vocab,
                                                                  args.cache_steps) for m in args.models]}
    emit(result, args.out)


if __name__ == "__main__":
    main()
