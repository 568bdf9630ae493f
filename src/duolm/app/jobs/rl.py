"""duolm rl: group-relative policy optimisation of a trained model (eval.checkpoint_path) on prompts
with verifiable rewards, for every method (duolm.rl; duolm.training.grpo_module on Lightning).

The run folder (run.dir, default `<the model's run>-rl`) holds checkpoints (a rerun of the same command
resumes), metrics.jsonl (one line per RL step: reward, accuracy, KL, completion length, clipped share,
an example completion; one per held-out check), rl.png (those curves), report.json and the policy as a
model folder (`model/`), which every command reads like any duolm model.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf

from duolm.app.config import ConfigError
from duolm.app.fields import config_message
from duolm.app.loading import load_for_eval
from duolm.app.outputs import model_reference, new_run_dir
from duolm.app.rewards import encode_prompt, prompts_and_rewards
from duolm.app.sampling_settings import sampling_settings
from duolm.app.training_run import build_trainer, resume_point
from duolm.checkpoints.loading import save_pretrained, training_of
from duolm.evaluation.plots import plot_rl_history
from duolm.io.atomic import write_json
from duolm.io.jsonl import jsonl_rows
from duolm.models.backbones import build_backbone
from duolm.rl.logprob import check_estimator
from duolm.sampling.request import request_from_settings
from duolm.training import quiet_libraries
from duolm.training.datamodule import PromptDataModule
from duolm.training.grpo_module import LitGRPO
from duolm.training.history import JsonlHistory, drop_jsonl_after
from duolm.training.interrupt import GracefulStop

METRICS = "metrics.jsonl"


def _estimator(cfg, method) -> str:
    name = cfg.rl.estimator
    if name == "auto":
        name = "exact" if method.exact_likelihood else "elbo"
    try:
        check_estimator(method, name)
    except ValueError as err:
        raise ConfigError(config_message(err).replace("sequence_logprob.estimator", "rl.estimator")) from None
    return name


def _encoded(tokenizer, records: list[dict], length: int, what: str) -> list[list[int]]:
    out = []
    for n, record in enumerate(records):
        ids = encode_prompt(tokenizer, record)
        if len(ids) >= length:
            raise ValueError(f"{what}: record {n + 1}'s prompt is {len(ids)} tokens, which leaves no room for a "
                             f"completion in the model's {length} (shorten it, or use a longer model)")
        out.append(ids)
    return out


def scorer(tokenizer, records: list[dict], rewards):
    """score(prompt indices, groups) for LitGRPO: each completion decoded (up to its EOS), scored
    against its prompt's record."""
    def score(indices, groups):
        texts = groups.texts(tokenizer)
        rows = [records[i] for i in indices for _ in range(groups.group)]
        reward, correct = rewards(rows, texts)
        P = len(indices)
        return {"reward": reward.reshape(P, groups.group), "accuracy": correct.double().reshape(P, groups.group),
                "example": texts[0] if texts else None}

    return score


def _read_rows(path: Path) -> list[dict]:
    return [row for _, row in jsonl_rows(path)] if path.is_file() else []


def cmd_rl(cfg, parts):
    if not cfg.eval.checkpoint_path:
        raise ValueError("duolm rl needs eval.checkpoint_path=<a trained model> (the policy to start from; an SFT "
                         "model of the task, e.g. duolm train data=sudoku)")
    ranks = cfg.trainer.devices * cfg.trainer.num_nodes
    if cfg.rl.prompts_per_step % ranks:
        raise ConfigError(f"rl.prompts_per_step ({cfg.rl.prompts_per_step}) must be a multiple of the number of "
                          f"devices ({ranks}: trainer.devices x trainer.num_nodes)")
    quiet_libraries()
    train_records, valid_records, rewards = prompts_and_rewards(cfg)  # before the model: a bad reward fails first
    run_dir = new_run_dir(cfg, "-rl", "duolm rl", "policy")
    OmegaConf.update(cfg, "run.dir", str(run_dir))
    pre, _ = load_for_eval(cfg)
    method, tokenizer, length = pre.method, pre.tokenizer, pre.config["length"]
    estimator = _estimator(cfg, method)
    settings = {k: v for k, v in sampling_settings(cfg.sampling).items() if k not in ("prefix", "chat", "infill")}
    try:
        spec = request_from_settings(settings, method=method, tokenizer=tokenizer, length=length).spec
    except ValueError as err:
        raise ConfigError(f"{config_message(err)} (the model at {cfg.eval.checkpoint_path} is {method.name}, length "
                          f"{length})") from None
    prompts = _encoded(tokenizer, train_records, length, "rl.prompts")
    valid_prompts = _encoded(tokenizer, valid_records, length, "rl.valid_prompts")
    r, t = cfg.rl, cfg.trainer
    ranks = t.devices * t.num_nodes
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = build_backbone(pre.backbone.config)
    backbone.load_state_dict(pre.backbone.state_dict())
    job = {"kind": "rl", "from": model_reference(cfg.eval.checkpoint_path)}
    export = {"algo": pre.config["algo"], "noise": pre.config["noise"], "tokenizer": tokenizer.to_dict(),
              "length": length, "job": job,
              "rl": {k: r[k] for k in ("group", "prompts_per_step", "estimator", "iterations", "beta", "clip")}}
    module = LitGRPO(method, backbone.train(), prompts, scorer(tokenizer, train_records, rewards), spec,
                     group=r.group, length=length, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                     estimator=estimator, samples=r.elbo_samples, iterations=r.iterations, clip=r.clip, beta=r.beta,
                     scale=r.advantage_scale, reference_sync=r.reference_sync, valid_prompts=valid_prompts,
                     valid_score=scorer(tokenizer, valid_records, rewards), lr=r.lr, weight_decay=r.weight_decay,
                     warmup_steps=r.warmup_steps, max_steps=r.steps * r.iterations, gradient_clip=r.gradient_clip,
                     seed=cfg.seed, export_config=export)
    dm = PromptDataModule(len(prompts), len(valid_prompts), per_device=r.prompts_per_step // ranks,
                          iterations=r.iterations, seed=cfg.seed, eval_batch_size=cfg.eval.batch_size)
    resume = resume_point(run_dir, cfg.run.resume, module)
    history = run_dir / METRICS
    if resume is None:
        drop_jsonl_after(history, -1)
    else:
        done = int(torch.load(resume, map_location="cpu", weights_only=True, mmap=True)["global_step"]) // r.iterations
        drop_jsonl_after(history, done)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"duolm rl: {method.name} policy from {cfg.eval.checkpoint_path} | {len(prompts)} prompts, "
          f"{len(valid_prompts)} held out | {r.steps} steps x {r.prompts_per_step} prompts x {r.group} completions | "
          f"log-probabilities: {estimator} | reward: {rewards.describe()} | sampler {spec.predictor}, "
          f"{spec.steps} steps" + (f" | resuming from {resume}" if resume else ""))
    stop = GracefulStop()
    val = {"val_every": r.eval_every, "limit_val_batches": 1.0} if valid_prompts else \
        {"val_every": r.steps + 1, "limit_val_batches": 0}
    trainer = build_trainer(cfg, run_dir, 1, [stop, JsonlHistory(history)], steps_per_batch=r.iterations,
                            max_steps=r.steps * r.iterations, manual=True, **val)
    t0 = time.perf_counter()
    with stop.installed():
        if valid_prompts and resume is None:  # the starting model's held-out accuracy: step 0 of the curve
            trainer.validate(module, datamodule=dm, verbose=False)
        trainer.fit(module, dm, ckpt_path=resume)
        checked = [row["step"] for row in _read_rows(history) if "valid_accuracy" in row]
        if valid_prompts and not stop.stopped and (not checked or checked[-1] != module.rl_step):
            trainer.validate(module, datamodule=dm, verbose=False)  # the final policy's accuracy
    seconds = time.perf_counter() - t0
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)
    steps = module.rl_step
    if stop.stopped:
        print(f"duolm: interrupted at RL step {steps}; the checkpoint is {last}; rerun the same command to resume")
        return 130
    if trainer.global_rank != 0:
        return 0
    model_dir = save_pretrained(run_dir / "model", module.policy(), algo=pre.config["algo"], noise=pre.config["noise"],
                                tokenizer=tokenizer, length=length, training=training_of(method),
                                extra={"data": cfg.data.name, "steps": steps, "job": job})
    rows = _read_rows(history)
    plot = plot_rl_history(rows, run_dir / "rl.png") if rows else None
    held = [row for row in rows if "valid_accuracy" in row]
    report = {"algo": method.name, "steps": steps, "seconds": seconds, "estimator": estimator,
              "reward": rewards.describe(), "model_dir": str(model_dir), "checkpoint": str(last),
              "valid_accuracy": [{"step": h["step"], "accuracy": h["valid_accuracy"]} for h in held]}
    write_json(report, run_dir / "report.json")
    trained = [row for row in rows if "reward" in row]
    first, final = trained[: max(1, len(trained) // 10)], trained[-max(1, len(trained) // 10):]

    def mean(xs, key):
        return sum(x[key] for x in xs) / len(xs)
    print(f"\nRL {steps} steps in {seconds / 60:.1f} min -> {model_dir}")
    if trained:
        print(f"reward {mean(first, 'reward'):.3f} -> {mean(final, 'reward'):.3f}, group accuracy "
              f"{mean(first, 'accuracy'):.3f} -> {mean(final, 'accuracy'):.3f} (first and last tenth of the steps)")
    if held:
        print(f"held-out accuracy ({held[-1]['valid_prompts']} prompts): "
              + " -> ".join(f"{h['valid_accuracy']:.3f} (step {h['step']})" for h in held[:1] + held[-1:]))
    print(f"metrics: {history}" + (f"; curves: {plot}" if plot else ""))
    return 0
