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
    _, splits = load_data(cfg, pre.tokenizer, pre.config["length"])
    device = default_device()
    pre.backbone.to(device)
    unit = unit_of(pre)
    ev = evaluate_nelbo(pre.method, pre.backbone, splits["valid"],
                        batch_size=cfg.eval.batch_size, time_samples=cfg.eval.time_samples,
                        max_batches=cfg.eval.max_batches, device=device, progress=True)
    capped = " (stopped by trainer.max_minutes)" if report.get("stopped_by") else ""
    print(f"\ntrained {report['steps']} steps in {report['train_seconds'] / 60:.1f} min{capped} -> {report['model_dir']}")
    bound = "exact NLL" if pre.method.exact_likelihood else "NELBO (an upper bound on the NLL)"
    print(perplexity_line(f"validation {bound}", ev, report["unigram_bits_per_token"], unit))
    res = sample_and_print(cfg, pre, device, checkpoint=report["model_dir"], out_dir=cfg.run.dir)
    write_json({**res, "validation": ev, "train": report}, Path(cfg.run.dir) / "report.json")
    # what a model card reports (duolm push): next to the weights, so the model folder is self-describing
    write_json({"validation": ev, "unit": unit, "data": cfg.data.name, "sampler": res.get("sampler"),
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
