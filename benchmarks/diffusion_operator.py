"""Speed and accuracy of the diffusion transformation operator; prints JSON.

    python benchmarks/diffusion_operator.py [--vocab 50257] [--points 100000] [--check 200]

Times T(gamma) and dT/dgamma for `points` gammas in [-12, 12] (operator set-up
included and reported separately) and measures the maximum absolute error
against scipy's adaptive quadrature on `check` of those points.
"""
from __future__ import annotations

# this file is named like the stdlib's `operator`: keep its folder off the import path
import argparse
import math
import time

import numpy as np
import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance
from scipy import integrate, stats

from duolm.core.operator import DiffusionTransform, fit_alpha


def scipy_alpha(K: int, gamma: float) -> float:
    mu = math.exp(-gamma / 2)
    f = lambda z: stats.norm.pdf(z - mu) * math.exp((K - 1) * stats.norm.logcdf(z))  # noqa: E731
    P = integrate.quad(f, -40, 40 + mu, epsabs=1e-14, epsrel=1e-12, limit=1000)[0]
    return (K * P - 1) / (K - 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--check", type=int, default=200)
    args = ap.parse_args()
    t0 = time.perf_counter()
    T = DiffusionTransform(args.vocab)
    setup = time.perf_counter() - t0
    gamma = torch.linspace(-12, 12, args.points, dtype=torch.float64)
    T(gamma[:100])  # warm-up
    t0 = time.perf_counter()
    out = T(gamma)
    seconds = time.perf_counter() - t0
    idx = np.linspace(0, args.points - 1, args.check).astype(int)
    t0 = time.perf_counter()
    ref = np.array([scipy_alpha(args.vocab, float(gamma[i])) for i in idx])
    scipy_seconds = time.perf_counter() - t0
    err = float(np.abs(out.alpha[idx].numpy() - ref).max())
    h = 1e-5
    sub = gamma[idx]
    fd = (T(sub + h).alpha - T(sub - h).alpha) / (2 * h)
    fits = {k: {"max_error": f.max_error, "max_error_dalpha_dt": f.max_error_dalpha}
            for k, f in ((k, fit_alpha(args.vocab, -3.55, -1.85, k)) for k in ("poly3", "poly5", "poly7", "poly9",
                                                                               "sigmoid"))}
    result = {
        **provenance(), "vocab_size": args.vocab, "points": args.points, "seconds": seconds, "setup_seconds": setup,
        "points_per_second": args.points / seconds, "quadrature_nodes": int(T.z.numel()),
        "checked_points": args.check, "max_abs_error_vs_scipy_quad": err,
        "scipy_quad_seconds_per_point": scipy_seconds / args.check,
        "max_abs_error_dalpha_vs_finite_difference": float((out.dalpha[idx] - fd).abs().max()),
        "fits_over_gamma_band": {"gamma_min": -3.55, "gamma_max": -1.85, **fits},
        "threads": torch.get_num_threads()}
    emit(result, args.out)


if __name__ == "__main__":
    main()
