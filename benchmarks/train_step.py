"""Training-step time and peak memory: the chunked (fused) loss against the straightforward one; prints JSON.

    python benchmarks/train_step.py [--quick] [--models tiny small] [--steps 3] [--repeats 2] [--out FILE]

Every configuration runs in a fresh subprocess, so its peak resident memory is its own; with
--repeats n the whole list runs n times, interleaved (fused, plain, fused, plain, ...), and each
configuration keeps its fastest repeat's median step and its smallest step memory, so a burst of
load on a shared machine does not decide a ratio. Per model
(GPT-2 vocabulary) and method (duo, mdlm, ar): the fused and the plain loss (``Method.fused``),
next to the baseline of the same backbone with a plain cross-entropy head and the same optimizer
(``ce``), and Duo fused with ``trainer.compile`` (the DiT's blocks compiled). Then Duo at length 1024,
fused against plain, for memory. The summary gives the ratios, each against its baseline from
this same run:

- ``speedup_fused``: plain step time / fused step time, per method;
- ``loss_overhead``: (fused Duo step - ce step) / ce step, the loss and its backward beyond a
  plain cross-entropy head;
- ``compile_speedup``: fused Duo eager / compiled (after the first, compiling, step);
- ``memory_ratio_1024``: the plain step's growth of peak memory over the model and optimizer
  state / the fused step's.

The model's FLOP/s (6 x non-embedding parameters + attention + the output layer, per token)
is shown next to a large float32 matmul's FLOP/s measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance

SHAPES = {"demo": (64, 128, 28), "tiny": (4, 256, 50257), "small": (2, 256, 50257)}


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(model: str, algo: str, batch: int, length: int, vocab: int, loss: str, compiled: bool, steps: int) -> dict:
    """One configuration's step time and memory (run in its own process)."""
    import torch.nn.functional as F

    from duolm.app.config import compose_components
    from duolm.models.dit import DiT

    ce = algo == "ce"
    _, parts = compose_components([f"model={model}", f"algo={'duo' if ce else algo}", f"model.length={length}",
                                   "model.dropout=0.0"])
    method = dataclasses.replace(parts.method(vocab), fused=loss == "fused")
    torch.manual_seed(0)
    net = DiT(parts.backbone_config(method))
    if compiled:
        net.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randint(0, vocab, (batch, length))

    def step():
        if ce:  # the baseline: the backbone with a plain cross-entropy head
            logits = net(x0, torch.zeros(batch))
            value = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x0.reshape(-1))
        else:
            value = method.token_loss(net, x0, generator=torch.Generator().manual_seed(0)).mean()
        opt.zero_grad(set_to_none=False)
        value.backward()
        opt.step()

    for p in net.parameters():  # the optimizer state and the gradients exist before the first measurement
        p.grad = torch.zeros_like(p)
    opt.step()
    before = rss_mb()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    c = net.config
    flops_per_token = 6 * net.num_parameters(exclude_embeddings=True) + 12 * c.n_blocks * c.hidden_size * length
    tokens = batch * length
    peak = rss_mb()
    return {"model": model, "algo": algo, "loss": "ce" if ce else loss, "compiled": compiled,
            "parameters": net.num_parameters(), "vocab": vocab, "batch": batch, "length": length,
            "seconds_per_step": dt, "first_step_seconds": first, "tokens_per_second": tokens / dt,
            "model_flops_per_second": flops_per_token * tokens / dt, "peak_rss_mb": peak,
            "rss_before_step_mb": before, "step_memory_mb": peak - before}


def configurations(models, quick: bool) -> list[tuple]:
    """(model, algo, loss, compiled, length or None) in the order they run."""
    out = []
    for m in models:
        out.append((m, "ce", "plain", False, None))
        for algo in (("duo",) if quick else ("duo", "mdlm", "ar")):
            out += [(m, algo, "fused", False, None), (m, algo, "plain", False, None)]
        if not quick and m != "demo":
            out.append((m, "duo", "fused", True, None))
    if not quick:
        out += [("tiny", "duo", "fused", False, 1024), ("tiny", "duo", "plain", False, 1024)]
    return out


def summarise(runs: list[dict]) -> dict:
    def find(model, algo, loss, compiled=False, length=256):
        return next((r for r in runs if r["model"] == model and r["algo"] == algo and r["loss"] == loss
                     and r["compiled"] == compiled and r["length"] == length), None)

    out = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        length = SHAPES[model][1]
        s = {}
        for algo in ("duo", "mdlm", "ar"):
            f, p = find(model, algo, "fused", length=length), find(model, algo, "plain", length=length)
            if f and p:
                s[f"speedup_fused_{algo}"] = p["seconds_per_step"] / f["seconds_per_step"]
        ce, f = find(model, "ce", "ce", length=length), find(model, "duo", "fused", length=length)
        if ce and f:
            s["loss_overhead_duo"] = (f["seconds_per_step"] - ce["seconds_per_step"]) / ce["seconds_per_step"]
            p = find(model, "duo", "plain", length=length)
            s["loss_overhead_duo_plain"] = (p["seconds_per_step"] - ce["seconds_per_step"]) / ce["seconds_per_step"]
        c = find(model, "duo", "fused", True, length)
        if c and f:
            s["compile_speedup_duo"] = f["seconds_per_step"] / c["seconds_per_step"]
        out[model] = s
    f, p = find("tiny", "duo", "fused", length=1024), find("tiny", "duo", "plain", length=1024)
    if f and p:
        out["memory_ratio_1024"] = p["step_memory_mb"] / f["step_memory_mb"]
        out["peak_rss_ratio_1024"] = p["peak_rss_mb"] / f["peak_rss_mb"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "small"], choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="Duo and the baseline only, no compile, no length 1024")
    ap.add_argument("--repeats", type=int, default=1, help="run every configuration this many times, interleaved")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(**json.loads(args.one))))
        return
    result = {**provenance(), "device": "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "matmul_flops_per_second": matmul_flops(), "repeats": args.repeats, "runs": []}
    best: dict[tuple, dict] = {}
    for rep in range(args.repeats):
        for model, algo, loss, compiled, length in configurations(args.models, args.quick):
            batch, default_length, vocab = SHAPES[model]
            spec = dict(model=model, algo=algo, batch=batch, length=length or default_length, vocab=vocab, loss=loss,
                        compiled=compiled, steps=1 if length else args.steps)
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"train_step: {spec} failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            key = (model, algo, loss, compiled, length)
            kept = best.get(key)
            if kept is not None:  # the fastest repeat's times, the smallest step memory
                r = {**(r if r["seconds_per_step"] < kept["seconds_per_step"] else kept),
                     "step_memory_mb": min(r["step_memory_mb"], kept["step_memory_mb"]),
                     "peak_rss_mb": min(r["peak_rss_mb"], kept["peak_rss_mb"])}
            best[key] = r
            print(f"[{rep + 1}/{args.repeats}] {model:6s} {algo:5s} {r['loss']:6s} "
                  f"{'compiled' if compiled else 'eager':8s} L={r['length']:5d} {r['seconds_per_step']:.3f} s/step, "
                  f"step memory {r['step_memory_mb']:.0f} MB", file=sys.stderr)
    for r in best.values():
        r["fraction_of_matmul_peak"] = r["model_flops_per_second"] / result["matmul_flops_per_second"]
        result["runs"].append(r)
    result["summary"] = summarise(result["runs"])
    emit(result, args.out)


if __name__ == "__main__":
    main()
