"""The papers' claims, checked on one CPU where sample quality is exact. Prints and writes JSON + PNG.

A random hidden Markov model (16 hidden states, 32 symbols, sequences of 64) generates the data,
so the exact NLL of every generated sample is known (forward algorithm), and so is the floor any
model's NELBO must stay above: H(X_1..64) / 64. AR, MDLM and Duo (with its curriculum) are
trained at the same size on fresh draws, each until its validation NELBO is within --stop-gap
nats of that floor or its time budget is spent; Duo is then distilled (DCD). Each diffusion model
samples with 4 ... 256 steps: ancestral, greedy tail, and the Psi-sampler with the Psi paper's
OpenWebText setting (kappa max-capped, eta = 0.01, linear grid; no nucleus, which would bias the
exact NLL). Reported per setting: the mean exact NLL per token of the samples (lower is better,
but below the floor means lost diversity) and the mean per-sample unigram entropy.

    python benchmarks/reproduce.py                  # the full run (about 2 hours on 2 CPU cores)
    python benchmarks/reproduce.py --quick          # under 10 minutes
    python benchmarks/reproduce.py --smoke          # seconds: the pipeline, not the result

The training loop here is a plain loop (fresh data every step, no files), not the Lightning layer,
so it measures the math at the smallest possible overhead; each step is the library's training
objective (duolm.training.objectives), the same call the Lightning module makes.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

try:
    from benchmarks.provenance import provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import provenance

from duolm.core.methods import build_method
from duolm.evaluation import evaluate_nelbo
from duolm.evaluation.hmm import random_hmm
from duolm.evaluation.samples import unigram_entropy
from duolm.models.dit import DiT, DiTConfig
from duolm.models.ema import EMA
from duolm.sampling import KappaSchedule, PsiOptions, SamplerSpec, ar_sample, parse_kappa
from duolm.sampling.generate import sample_batch
from duolm.training.curriculum import Curriculum, CurriculumSchedule
from duolm.training.distill import DeltaSchedule
from duolm.training.objectives import CurriculumNelbo, Distillation, Nelbo

PRESETS = {
    # minutes of training per model, DCD rounds x steps, samples per setting, step counts
    "full": dict(minutes={"ar": 10, "mdlm": 25, "duo": 30}, curriculum_steps=400, rounds=5, round_steps=60,
                 n_samples=256, steps=[4, 8, 16, 32, 64, 128, 256], hidden=128, blocks=3, batch=256, n_valid=1024),
    "quick": dict(minutes={"ar": 1.0, "mdlm": 1.5, "duo": 2.0}, curriculum_steps=100, rounds=3, round_steps=40,
                  n_samples=128, steps=[4, 16, 64], hidden=96, blocks=3, batch=128, n_valid=512),
    "smoke": dict(minutes={"ar": 0.02, "mdlm": 0.02, "duo": 0.02}, curriculum_steps=2, rounds=2, round_steps=2,
                  n_samples=8, steps=[2, 4], hidden=32, blocks=1, batch=16, n_valid=32),
}
SAMPLERS = ("ancestral", "greedy_tail", "psi")


def make_model(method, hidden: int, blocks: int) -> DiT:
    return DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=hidden, cond_dim=64, n_blocks=blocks,
                         n_heads=4, dropout=0.0, causal=method.causal))


def with_bos(x: torch.Tensor, bos: int) -> torch.Tensor:
    return torch.cat([torch.full((x.shape[0], 1), bos, dtype=x.dtype), x], dim=1)


def nelbo(method, net, x_valid, bos, time_samples=1) -> dict:
    """Validation NELBO per token (exact NLL for AR, whose sequences get a BOS in front)."""
    x = with_bos(x_valid, bos) if method.process is None else x_valid
    return evaluate_nelbo(method, net, x, torch.ones_like(x, dtype=torch.float32), batch_size=256,
                          time_samples=time_samples)


def validate(method, net, ema, x_valid, bos) -> dict:
    with ema.swapped_in(net):
        out = nelbo(method, net, x_valid, bos)
    net.train()
    return out


def training_loss(objective, net, x0, step: int, generator) -> torch.Tensor:
    """One step's loss: the objective's token loss, averaged (what the Lightning module computes)."""
    return objective.token_loss(net, x0, None, step=step, generator=generator).mean()


def train(name, method, net, hmm, args, preset, x_valid, floor, *, curriculum=None, log=print):
    """Train until the validation NELBO is within stop_gap of the floor, or the minutes (or
    preset['max_steps'][name], when given: deterministic runs for tests) run out."""
    L, V = args.length, hmm.vocab_size
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    ema = EMA(net, args.ema)
    g = torch.Generator().manual_seed(args.seed + 17)
    budget = preset["minutes"][name] * 60
    max_steps = (preset.get("max_steps") or {}).get(name)
    curve, step, t0, next_val = [], 0, time.perf_counter(), 0.0
    val_every = max(budget / 12, 1e-3)
    objective = CurriculumNelbo(method, curriculum) if curriculum is not None else Nelbo(method)
    while True:
        elapsed = time.perf_counter() - t0
        done = elapsed >= budget or (max_steps is not None and step >= max_steps)
        if elapsed >= next_val or done:
            v = validate(method, net, ema, x_valid, V)
            curve.append({"step": step, "seconds": round(elapsed, 1), "nelbo": v["nll"]})
            log(f"  {name} step {step:5d} {elapsed / 60:5.1f} min  valid NELBO {v['nll']:.3f} "
                f"(floor {floor:.3f})")
            next_val = elapsed + val_every
            if done or v["nll"] <= floor + args.stop_gap:
                break
        x0 = hmm.sample(preset["batch"], L, g)
        loss = training_loss(objective, net, with_bos(x0, V) if method.process is None else x0, step, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(net)
        step += 1
    ema.copy_to(net)
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "curve": curve}


def distill(method, student, hmm, args, preset, *, log=print):
    """DCD: rounds of `round_steps`; the teacher is refreshed and delta doubles every round."""
    L = args.length
    ds = DeltaSchedule(num_steps=args.dcd_T, update_every=preset["round_steps"])
    objective = Distillation(method, student, schedule=ds, kind=args.dcd_kind, gamma_min=args.dcd_gamma_min,
                             gamma_max=args.dcd_gamma_max)
    opt = torch.optim.AdamW(student.parameters(), lr=args.dcd_lr)
    g = torch.Generator().manual_seed(args.seed + 29)
    t0, total = time.perf_counter(), preset["rounds"] * preset["round_steps"]
    for step in range(total):
        if step % ds.update_every == 0:
            log(f"  dcd round {ds.round(step)}: delta {ds.delta(step):.4f}")
        x0 = hmm.sample(preset["batch"], L, g)
        loss = training_loss(objective, student, x0, step, g)  # refreshes the teacher at each new round
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
    return {"steps": total, "seconds": round(time.perf_counter() - t0, 1), "T": args.dcd_T,
            "rounds": preset["rounds"], "final_delta": ds.delta(total - 1)}


def sampler_spec(kind: str, steps: int) -> SamplerSpec:
    if kind == "ancestral":
        return SamplerSpec(predictor="ancestral", steps=steps, noise_removal="ancestral")
    if kind == "greedy_tail":
        return SamplerSpec(predictor="ancestral", steps=steps, noise_removal="greedy")
    k = parse_kappa("max-capped-0.01")
    return SamplerSpec(predictor="psi", steps=steps, noise_removal="greedy",
                       options=PsiOptions(kappa=KappaSchedule(k, k, k, high_frac=0.0, middle_frac=0.0)))


def quality(x: torch.Tensor, hmm) -> dict:
    nll = hmm.nll_per_token(x)
    ent = unigram_entropy(x)
    return {"nll": float(nll.mean()), "nll_se": float(nll.std() / math.sqrt(len(nll))),
            "entropy": float(ent.mean()), "distinct": len({tuple(r) for r in x.tolist()}) / x.shape[0]}


def draw(method, net, kind, steps, n, L, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    net.eval()
    out = []
    for start in range(0, n, 256):
        b = min(256, n - start)
        if method.process is None:
            V = method.vocab_size - 1  # the last id is BOS, never drawn
            out.append(ar_sample(net, b, L + 1, V, generator=g, vocab_size=V)[:, 1:])
        else:
            out.append(sample_batch(method, net, sampler_spec(kind, steps), b, L, bos_id=0, generator=g))
    return torch.cat(out)


def plot(result: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    floor = result["floor_nats"]
    styles = {"ancestral": "-", "greedy_tail": "--", "psi": ":"}
    colors = {"mdlm": "tab:blue", "duo": "tab:orange", "duo_dcd": "tab:green"}
    for model, rows in result["samples"].items():
        if model == "ar":
            for ax, key in zip(axes[:2], ("nll", "entropy")):
                ax.axhline(rows["ar"][key], color="tab:gray", lw=1, label="AR (64 steps)")
            continue
        for kind, per_steps in rows.items():
            steps = sorted(int(s) for s in per_steps)
            for ax, key in zip(axes[:2], ("nll", "entropy")):
                ax.plot(steps, [per_steps[str(s)][key] for s in steps], styles[kind], marker="o", ms=3,
                        color=colors[model], label=f"{model} {kind}")
    axes[0].axhline(floor, color="k", lw=1, label="true entropy / token")
    axes[1].axhline(result["data_entropy"], color="k", lw=1, label="data")
    for ax, title in zip(axes[:2], ("exact NLL of samples (nats/token)", "unigram entropy of samples (nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
    axes[0].legend(fontsize=6, ncol=2)
    for model, tr in result["training"].items():
        c = tr["curve"]
        axes[2].plot([p["seconds"] / 60 for p in c], [p["nelbo"] for p in c], marker=".",
                     color=colors.get(model, "tab:gray"), label=model)
    axes[2].axhline(floor, color="k", lw=1, label="floor")
    axes[2].set_xlabel("training minutes (2 CPU cores)")
    axes[2].set_title("validation NELBO (nats/token)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The result as Markdown tables: validation NELBO per model, then sample NLL (entropy) per
    model x sampler x steps."""
    floor = result["floor_nats"]
    lines = [f"True entropy of the process: {floor:.3f} nats/token (data samples: NLL "
             f"{result['data_nll']:.3f}, unigram entropy {result['data_entropy']:.3f}).", "",
             "| model | training | validation NELBO | gap to the floor |", "|---|---|---|---|"]
    for name, v in result["validation"].items():
        tr = result["training"].get(name, {})
        lines.append(f"| {name} | {tr.get('steps', '?')} steps, {tr.get('seconds', 0) / 60:.1f} min | "
                     f"{v['nelbo']:.3f} ± {v['se']:.3f} | {v['gap']:+.3f} |")
    steps = sorted({int(k) for rows in result["samples"].values() for kind, per in rows.items() if kind != "ar"
                    for k in per})
    lines += ["", "Exact NLL per token of the samples (their mean unigram entropy):", "",
              "| model | sampler | " + " | ".join(str(x) for x in steps) + " |",
              "|---|---|" + "---|" * len(steps)]
    for name, rows in result["samples"].items():
        for kind, per in rows.items():
            if kind == "ar":
                q = per
                lines.append(f"| {name} | ancestral, {result['config']['length']} steps | "
                             f"{q['nll']:.3f} ({q['entropy']:.2f}) |" + " |" * (len(steps) - 1))
                continue
            cells = [f"{per[str(x)]['nll']:.3f} ({per[str(x)]['entropy']:.2f})" if str(x) in per else ""
                     for x in steps]
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results/reproduce for the full "
                    "run, .../reproduce-quick and .../reproduce-smoke for the others, so they never replace it)")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--stop-gap", type=float, default=0.1, help="stop a model this close to the floor (nats)")
    ap.add_argument("--curriculum-band", type=float, nargs=2, default=(-2.7, 1.5),
                    help="log-SNR band of the curriculum (alpha 0.94 .. 0.05 at 32 symbols)")
    ap.add_argument("--dcd-T", type=int, default=64)
    ap.add_argument("--dcd-lr", type=float, default=3e-4)
    ap.add_argument("--dcd-kind", default="kl-bwd", choices=["kl-bwd", "kl-fwd"])
    ap.add_argument("--dcd-gamma-min", type=float, default=-3.5)
    ap.add_argument("--dcd-gamma-max", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--note", default=None, help="recorded in the JSON (say, what else ran on the machine)")
    ap.add_argument("--table", metavar="JSON", help="print the Markdown tables of a finished run and exit")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return None
    preset_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    preset = PRESETS[preset_name]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out or "benchmarks/results/reproduce" + ("" if preset_name == "full" else f"-{preset_name}"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(msg, flush=True)

    hmm = random_hmm(16, 32, 0.1, 0.03, seed=args.seed)
    L, V = args.length, hmm.vocab_size
    floor, floor_se = hmm.entropy_per_token(L, n=20_000 if preset_name != "smoke" else 512, seed=args.seed + 1)
    x_valid = hmm.sample(preset["n_valid"], L, torch.Generator().manual_seed(args.seed + 2))
    data = hmm.sample(preset["n_samples"], L, torch.Generator().manual_seed(args.seed + 3))
    log(f"HMM: 16 states, {V} symbols, length {L}; floor H/L = {floor:.4f} +- {floor_se:.4f} nats/token "
        f"[{preset_name}]")
    result = {**provenance(None if argv is None else ["benchmarks/reproduce.py", *argv],
                           **({"note": args.note} if args.note else {})), "preset": preset_name, "config": {**{k: v for k, v in preset.items()}, **vars(args)},
              "floor_nats": floor, "floor_se": floor_se, "data_entropy": float(unigram_entropy(data).mean()),
              "data_nll": float(hmm.nll_per_token(data).mean()), "training": {}, "validation": {}, "samples": {}}
    nets = {}
    models = out / "models"   # trained weights: a rerun skips what is there (delete to retrain)
    models.mkdir(exist_ok=True)

    def save_partial():
        (out / "reproduce.json").write_text(json.dumps({**result, "partial": True}, indent=1))

    for name, algo, vocab in (("ar", "ar", V + 1), ("mdlm", "mdlm", V), ("duo", "duo", V)):
        method = build_method(algo, vocab)
        torch.manual_seed(args.seed)
        net = make_model(method, preset["hidden"], preset["blocks"])
        if (models / f"{name}.pt").exists():
            saved = torch.load(models / f"{name}.pt", weights_only=True)
            net.load_state_dict(saved["weights"])
            result["training"][name] = json.loads(saved["record"])
            nets[name] = (method, net)
            log(f"{name}: loaded {models / f'{name}.pt'}")
            continue
        cur = None
        if name == "duo":
            cs = CurriculumSchedule(mode="simple", tau_log10_start=-1.0, tau_log10_end=-2.0, start=0,
                                    end=preset["curriculum_steps"], gamma_min=args.curriculum_band[0],
                                    gamma_max=args.curriculum_band[1])
            cur = Curriculum(cs, V)
        log(f"training {name} ({net.num_parameters() / 1e6:.2f}M parameters, budget "
            f"{preset['minutes'][name]} min)")
        result["training"][name] = train(name, method, net, hmm, args, preset, x_valid, floor, curriculum=cur,
                                         log=log)
        torch.save({"weights": net.state_dict(), "record": json.dumps(result["training"][name])},
                   models / f"{name}.pt")
        nets[name] = (method, net)
        save_partial()
    method, teacher = nets["duo"]
    student = copy.deepcopy(teacher).train()
    if (models / "duo_dcd.pt").exists():
        saved = torch.load(models / "duo_dcd.pt", weights_only=True)
        student.load_state_dict(saved["weights"])
        result["training"]["duo_dcd"] = json.loads(saved["record"])
    else:
        log("distilling duo (DCD)")
        result["training"]["duo_dcd"] = {**distill(method, student, hmm, args, preset, log=log), "curve": []}
        torch.save({"weights": student.state_dict(), "record": json.dumps(result["training"]["duo_dcd"])},
                   models / "duo_dcd.pt")
    nets["duo_dcd"] = (method, student)
    for name, (method, net) in nets.items():
        ev = nelbo(method, net, x_valid, V, time_samples=1 if method.process is None else 4)
        result["validation"][name] = {"nelbo": ev["nll"], "se": ev["nll_se"], "gap": ev["nll"] - floor}
        log(f"{name}: validation NELBO {ev['nll']:.4f} +- {ev['nll_se']:.4f} (gap to floor {ev['nll'] - floor:+.4f})")
    for name, (method, net) in nets.items():
        if method.process is None:
            x = draw(method, net, "ar", L, preset["n_samples"], L, args.seed + 5)
            result["samples"][name] = {"ar": quality(x, hmm)}
            log(f"  {name}: NLL {result['samples'][name]['ar']['nll']:.3f}")
            continue
        result["samples"][name] = {}
        for kind in SAMPLERS:
            result["samples"][name][kind] = {}
            for steps in preset["steps"]:
                t0 = time.perf_counter()
                x = draw(method, net, kind, steps, preset["n_samples"], L, args.seed + 5 + steps)
                q = {**quality(x, hmm), "seconds": round(time.perf_counter() - t0, 2)}
                result["samples"][name][kind][str(steps)] = q
                log(f"  {name:8s} {kind:11s} {steps:4d} steps: NLL {q['nll']:.3f} +- {q['nll_se']:.3f}  "
                    f"entropy {q['entropy']:.3f}")
            save_partial()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "reproduce.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "reproduce.png")
    (out / "reproduce.md").write_text(markdown(result))
    log(f"wrote {out / 'reproduce.json'} and {out / 'reproduce.png'} in {result['seconds'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
