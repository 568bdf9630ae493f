"""Peak memory and time of one curriculum training step, dense versus top-k; prints JSON.

    python benchmarks/curriculum.py [--vocab 50257] [--batch 4] [--length 128] [--ks 2 8 32]

Each configuration runs in a fresh subprocess; peak memory is the growth of the
process's peak resident set over its resident set right before the first step
(model and optimizer built), measured for
(a) the input path alone (latents -> relaxed input -> input embedding, forward
and backward) and (b) a whole training step of the tiny DiT.
"""
from __future__ import annotations

import argparse
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


def _rss_mb():
    """Peak resident set of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def one(kind: str, k: int, vocab: int, batch: int, length: int, what: str) -> dict:
    from duolm.core.methods import build_method
    from duolm.models.dit import DiT, DiTConfig
    from duolm.training.curriculum import Curriculum, CurriculumSchedule

    torch.manual_seed(0)
    method = build_method("duo", vocab)
    mode = "simple" if kind == "dense" else "poly9"
    cur = Curriculum(CurriculumSchedule(mode=mode, start=0, end=10, gamma_min=-3.55, gamma_max=-1.85,
                                        top_k=-1 if kind == "dense" else k, tau_log10_start=-3,
                                        tau_log10_end=-3), vocab)
    net = DiT(DiTConfig(vocab_size=vocab, hidden_size=256, cond_dim=128, n_blocks=2, n_heads=4, dropout=0.0))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randint(0, vocab, (batch, length))
    t = torch.rand(batch)

    def input_path():
        from duolm.core.operator import gaussian_latents
        from duolm.training.curriculum import topk_relaxation

        gamma = (-3.55 + t * 1.7)[:, None]
        if kind == "dense":
            (w,) = gaussian_latents(x0, [gamma], vocab)
            h = net.vocab_embed(w / 1e-3)
        else:
            ids, weights, _ = topk_relaxation(x0, gamma, vocab, k, 1e-3)
            h = net.vocab_embed(ids, weights)
        h.square().mean().backward()

    def full_step():
        loss = cur.token_loss(method, net, x0, None, step=0, t=t).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fn = input_path if what == "input" else full_step
    before = _current_rss_mb()
    fn()  # warm-up (counted in the peak: it is a real step)
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        fn()
    dt = (time.perf_counter() - t0) / reps
    return {"relaxation": kind, "top_k": k if kind != "dense" else None, "what": what, "seconds": dt,
            "peak_growth_mb": max(0.0, _rss_mb() - before), "peak_rss_mb": _rss_mb()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 8, 32])
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.one:
        kind, k, what = args.one
        print(json.dumps(one(kind, int(k), args.vocab, args.batch, args.length, what)))
        return
    runs = []
    for what in ("input", "step"):
        for kind, k in [("dense", 0)] + [("topk", k) for k in args.ks]:
            proc = subprocess.run([sys.executable, __file__, "--vocab", str(args.vocab), "--batch", str(args.batch),
                                   "--length", str(args.length), "--one", kind, str(k), what],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    dense = {r["what"]: r for r in runs if r["relaxation"] == "dense"}
    for r in runs:
        d = dense[r["what"]]
        r["memory_ratio_dense_over_this"] = d["peak_growth_mb"] / max(r["peak_growth_mb"], 1e-9)
        r["time_ratio_dense_over_this"] = d["seconds"] / r["seconds"]
    emit({**provenance(), "vocab_size": args.vocab, "batch": args.batch, "length": args.length,
          "threads": torch.get_num_threads(), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
