"""Does Discrete Consistency Distillation help few-step sampling? A CPU-sized check; prints JSON.

A random first-order Markov chain over K tokens generates the data, so the exact negative
log-likelihood of any sample is known. A Duo teacher is trained on it, then distilled (DCD,
rounds with delta doubling); teacher and student sample with 4, 8, 16 and 32 steps, and the
exact NLL per token of their samples is reported next to the chain's entropy rate.

    python benchmarks/distill_effect.py [--teacher-steps 1500] [--rounds 4] [--round-steps 150]
"""
from __future__ import annotations

import sys

if sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
    sys.path.pop(0)  # benchmarks/operator.py would shadow the stdlib's `operator`

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from duolm.distill import DeltaSchedule, Teacher, dcd_loss  # noqa: E402
from duolm.evaluation.synthetic import (bigram_tv, diversity, entropy_rate, markov_chain, nll_per_token,  # noqa: E402
                                       sample_chain)
from duolm.methods import build_method  # noqa: E402
from duolm.models.dit import DiT, DiTConfig  # noqa: E402
from duolm.operator import DiffusionTransform  # noqa: E402
from duolm.sampling import ancestral_sample, denoiser_from  # noqa: E402


def evaluate(method, net, pi, P, L, steps_list, n=512, seed=0):
    den = denoiser_from(method, net)
    out = {}
    for steps in steps_list:
        x = ancestral_sample(den, method.process, method.schedule, (n, L), steps=steps, noise_removal="greedy",
                             generator=torch.Generator().manual_seed(seed + steps))
        ent, uniq = diversity(x)
        out[steps] = {"nll": nll_per_token(x, pi, P), "bigram_tv": bigram_tv(x, pi, P), "token_entropy": ent,
                      "distinct": uniq}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--round-steps", type=int, default=150)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    pi, P = markov_chain(args.K, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    method = build_method("duo", args.K)
    net = DiT(DiTConfig(vocab_size=args.K, hidden_size=96, cond_dim=32, n_blocks=3, n_heads=4, dropout=0.0))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for step in range(args.teacher_steps):
        x0 = sample_chain(pi, P, args.batch, args.L, g)
        loss = method.token_loss(net, x0, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    teacher_seconds = time.perf_counter() - t0
    steps_list = [4, 8, 16, 32]
    before = evaluate(method, net.eval(), pi, P, args.L, steps_list)
    many = evaluate(method, net, pi, P, args.L, [256])[256]
    data = sample_chain(pi, P, 512, args.L, torch.Generator().manual_seed(99))
    data_ent, data_uniq = diversity(data)
    # distillation
    student = net.train()
    teacher = Teacher(student)
    sched = DeltaSchedule(num_steps=args.T, update_every=args.round_steps)
    op = DiffusionTransform(args.K)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-4)
    t0 = time.perf_counter()
    for step in range(args.rounds * args.round_steps):
        teacher.maybe_refresh(step, sched, student)
        x0 = sample_chain(pi, P, args.batch, args.L, g)
        t = torch.rand(args.batch, generator=g)
        loss = dcd_loss(method, student, teacher.net, x0, t, sched.delta(step), operator=op, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    distill_seconds = time.perf_counter() - t0
    after = evaluate(method, student.eval(), pi, P, args.L, steps_list)
    print(json.dumps({"K": args.K, "L": args.L, "entropy_rate_nats": entropy_rate(pi, P),
                      "unigram_nats": float(-(pi * pi.log()).sum()),
                      "teacher_steps": args.teacher_steps, "teacher_seconds": teacher_seconds,
                      "distill_rounds": args.rounds, "round_steps": args.round_steps, "T": args.T,
                      "distill_seconds": distill_seconds, "teacher_256_steps": many,
                      "data": {"nll": nll_per_token(data, pi, P), "bigram_tv": bigram_tv(data, pi, P),
                               "token_entropy": data_ent, "distinct": data_uniq},
                      "samples": {"teacher": before, "student": after}}, indent=1))


if __name__ == "__main__":
    main()
