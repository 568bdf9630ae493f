"""duolm train and duolm distill: a run on Lightning, then its validation NELBO and samples."""
from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from duolm.app.jobs.sample import sample_and_print
from duolm.app.loading import device as default_device
from duolm.app.loading import load_for_eval, perplexity_line, unit_of
from duolm.app.outputs import distill_run_dir
from duolm.app.training_run import load_data, train
from duolm.checkpoints.duolm_format import METRICS_FILE
from duolm.checkpoints.loading import from_pretrained
from duolm.evaluation import evaluate_nelbo
from duolm.io.atomic import write_json
from duolm.training import quiet_libraries

# a run shorter than this many optimizer steps is a try-out: its end-of-run report is shortened
# (validation and samples would otherwise take longer than the training: a 10-step model=hf run
# spent 51 s training, 2:09 validating and 10:00 sampling), unless the user set those keys
SHORT_RUN = 100
SHORT_REPORT = {"eval.max_batches": 16, "sampling.num_samples": 2, "sampling.steps": 16}


def short_report(cfg, steps: int) -> dict:
    """The end-of-run settings a short run uses in place of the defaults the user did not set."""
    if steps >= SHORT_RUN:
        return {}
    given = set(cfg.get("given", []))
    return {k: v for k, v in SHORT_REPORT.items() if k not in given
            and (OmegaConf.select(cfg, k) is None or v < OmegaConf.select(cfg, k))}


def cmd_train(cfg, parts, init=None):
    quiet_libraries()
    report = train(cfg, init=init, parts=parts)
    if report.get("interrupted"):
        print(f"duolm: interrupted at step {report['steps']}; the checkpoint is {report['checkpoint']} and the model "
              f"{report.get('model_dir', '(rank 0 writes it)')}; rerun the same command to resume", file=sys.stderr)
        return 130
    if report.get("stopped_by"):
        print(f"duolm: stopped by trainer.max_minutes={cfg.trainer.max_minutes} at step {report['steps']} of "
              f"{cfg.trainer.max_steps}; the checkpoint is {report['checkpoint']}; to continue, rerun the same command "
              f"with a larger trainer.max_minutes (or trainer.max_minutes=null)", file=sys.stderr)
    if "model_dir" not in report:  # not rank 0
        return 0
    pre = from_pretrained(report["model_dir"])
    device = default_device()
    pre.backbone.to(device)
    unit = unit_of(pre)
    capped = " (stopped by trainer.max_minutes)" if report.get("stopped_by") else ""
    print(f"\ntrained {report['steps']} steps in {report['train_seconds'] / 60:.1f} min{capped} -> {report['model_dir']}")
    short = short_report(cfg, report["steps"])
    if short:
        print(f"a short run ({report['steps']} < {SHORT_RUN} steps): its report uses "
              f"{' '.join(f'{k}={v}' for k, v in short.items())} (set them, or run.final_validation=false / "
              f"run.final_samples=false, to choose)")
        for key, value in short.items():
            OmegaConf.update(cfg, key, value)
    ev = None
    if cfg.run.final_validation:
        _, splits = load_data(cfg, pre.tokenizer, pre.config["length"])
        ev = evaluate_nelbo(pre.method, pre.backbone, splits["valid"],
                            batch_size=cfg.eval.batch_size, time_samples=cfg.eval.time_samples,
                            max_batches=cfg.eval.max_batches, device=device, progress=True,
                            eos_id=pre.tokenizer.eos_id)
        bound = "exact NLL" if pre.method.exact_likelihood else "NELBO (an upper bound on the NLL)"
        print(perplexity_line(f"validation {bound}", ev, report["unigram_bits_per_token"], unit))
    res = sample_and_print(cfg, pre, device, checkpoint=report["model_dir"], out_dir=cfg.run.dir) \
        if cfg.run.final_samples else {}
    write_json({**res, **({"validation": ev} if ev else {}), "train": report}, Path(cfg.run.dir) / "report.json")
    # what a model card reports (duolm push): next to the weights, so the model folder is self-describing
    write_json({**({"validation": ev} if ev else {}), "unit": unit, "data": cfg.data.name,
                "sampler": res.get("sampler"),
                "train": {k: report[k] for k in ("steps", "train_seconds", "parameters")},
                "samples": [smp["text"] for smp in res.get("samples", [])[:3] if "text" in smp]},
               Path(report["model_dir"]) / METRICS_FILE)
    return 0


def cmd_distill(cfg, parts):
    """Discrete Consistency Distillation of a trained Duo model (eval.checkpoint_path)."""
    if not cfg.eval.checkpoint_path:
        raise ValueError("duolm distill needs eval.checkpoint_path=<a trained Duo model>")
    run_dir = distill_run_dir(cfg)  # a new run next to the teacher's, never the teacher's own
    OmegaConf.update(cfg, "run.dir", str(run_dir))
    pre, _ = load_for_eval(cfg)
    pre.backbone.cpu().train()
    OmegaConf.update(cfg, "distill.enabled", True)
    return cmd_train(cfg, parts, init=pre)
