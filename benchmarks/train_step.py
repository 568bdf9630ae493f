"""Training-step throughput, peak memory and achieved FLOP/s of the DiT on this machine; prints JSON.

Each configuration runs in a fresh subprocess so its peak resident memory is its own.
The model's FLOP/s (6 x non-embedding parameters + attention, per token, forward
and backward; the output layer counted) is shown next to the FLOP/s of a large
float32 matmul measured in the same run, which is the ceiling on this hardware.

    python benchmarks/train_step.py [--models demo tiny small] [--steps 5]
"""
from __future__ import annotations

import sys


import argparse
import json
import resource
import subprocess
import time

import torch


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def one(model: str, algo: str, batch: int, length: int, vocab: int, steps: int) -> dict:
    from duolm.config import compose_components
    from duolm.models.dit import DiT

    cfg, parts = compose_components([f"model={model}", f"algo={algo}", f"model.length={length}", "model.dropout=0.0"])
    method = parts.method(vocab)
    net = DiT(parts.backbone_config(method))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.randint(0, vocab, (batch, length))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        loss = method.token_loss(net, x0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocations, first-call overheads)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t0) / steps
    c = net.config
    n_body = net.num_parameters(exclude_embeddings=True)
    attn = 12 * c.n_blocks * c.hidden_size * length  # QK^T and AV, forward + backward, per token
    flops_per_token = 6 * n_body + attn
    tokens = batch * length
    return {"model": model, "algo": algo, "parameters": net.num_parameters(), "vocab": vocab, "batch": batch,
            "length": length, "seconds_per_step": dt, "tokens_per_second": tokens / dt,
            "model_flops_per_second": flops_per_token * tokens / dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss0 / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["demo", "tiny", "small"])
    ap.add_argument("--algo", default="duo")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        m, algo, b, L, v = args.one
        print(json.dumps(one(m, algo, int(b), int(L), int(v), args.steps)))
        return
    shapes = {"demo": (64, 128, 28), "tiny": (4, 256, 50257), "small": (2, 256, 50257), "medium": (1, 256, 50257)}
    out = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
           "matmul_flops_per_second": matmul_flops(), "runs": []}
    for m in args.models:
        b, L, v = shapes[m]
        proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--one", m, args.algo,
                               str(b), str(L), str(v)], capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["fraction_of_matmul_peak"] = r["model_flops_per_second"] / out["matmul_flops_per_second"]
        out["runs"].append(r)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
