"""Build everything a training run needs from a validated config, and run it on Lightning."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from duolm.app.config import is_image_data, validate
from duolm.app.data_settings import load_data
from duolm.app.outputs import model_reference
from duolm.checkpoints.loading import FORMAT, save_pretrained, training_of
from duolm.core.conditioning import num_classes_of
from duolm.core.methods import Method
from duolm.data.images import horizontal_flip
from duolm.data.pipeline import EVAL_ONLY
from duolm.data.statistics import unigram_entropy_bits
from duolm.data.tokenizers import load_tokenizer
from duolm.io.atomic import atomic_torch_save
from duolm.models.backbones import backbone_row, build_backbone
from duolm.training import StoppedAtOnce
from duolm.training.curriculum import Curriculum
from duolm.training.datamodule import BlockDataModule
from duolm.training.history import TRAIN_JOB, AppendingCSVLogger, check_resumable, drop_rows_after
from duolm.training.interrupt import GracefulStop
from duolm.training.module import LitDiffusionLM, NonFiniteLossError
from duolm.training.objectives import CurriculumNelbo, Distillation, Nelbo
from duolm.training.step_progress import StepProgress


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_torch_save(checkpoint, path)


def build_objective(parts, method, backbone, *, distill_cfg=None, curriculum: bool = True, antithetic: bool = True,
                    num_classes: int = 0):
    """The training objective: DCD when distill_cfg is given, Duo's curriculum when configured (and
    `curriculum`: not when continuing a trained model), else the method's NELBO (duolm.training.objectives)."""
    if distill_cfg is not None:
        d = distill_cfg
        if num_classes:
            raise ValueError("duolm distill: distilling a class-conditional model is not supported yet")
        return Distillation(method, backbone, schedule=parts.delta, kind=d.loss_type, gamma_min=d.gamma_min,
                            gamma_max=d.gamma_max, teacher_from=d.teacher_from, dtype=parts.loss_dtype,
                            antithetic=antithetic)
    labels = dict(num_classes=num_classes, class_dropout=parts.class_dropout)
    clip = parts.algo.get("clip_min"), parts.algo.get("clip_max")
    if clip != (None, None):
        return Nelbo(method, antithetic=antithetic, time_range=clip, **labels)
    if curriculum and parts.curriculum is not None:
        return CurriculumNelbo(method, Curriculum(parts.curriculum, method.process.num_states), antithetic=antithetic,
                               **labels)
    return Nelbo(method, antithetic=antithetic, **labels)


def _data_fingerprint(cfg, splits) -> dict:
    """The corpus a run trains on: its source and the key of its store (source files, tokenizer,
    length, block mode), so a resume on another corpus is refused."""
    return {"source": cfg.data.source, "store": splits["valid"].directory.parent.name.rsplit("-", 1)[-1]}


def _pin_memory(cfg) -> bool:
    if cfg.loader.pin_memory == "auto":
        return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    return bool(cfg.loader.pin_memory)


def _precision(cfg) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") \
        else "32-true"


def _loggers(cfg, run_dir: Path):
    out = []
    if cfg.logging.csv:
        out.append(AppendingCSVLogger(run_dir, name="logs", version=""))
    if cfg.logging.tensorboard:
        out.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
    if cfg.logging.wandb:
        out.append(WandbLogger(save_dir=str(run_dir), offline=True, project="duolm"))
    return out or False


def build_trainer(cfg, run_dir: Path, accumulate: int, callbacks=(), *, steps_per_batch: int = 1,
                  max_steps: int | None = None, val_every: int | None = None, manual: bool = False,
                  limit_val_batches=None):
    """The Lightning trainer of a run (trainer.*, run.checkpoint_every). A run that optimises by hand
    (`manual`: RL, `steps_per_batch` optimizer steps per batch) clips its own gradients; max_steps and
    val_every (in batches) and limit_val_batches replace trainer.max_steps, trainer.val_check_interval
    and trainer.limit_val_batches."""
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", every_n_train_steps=
                           cfg.run.checkpoint_every * steps_per_batch, save_last=True, save_top_k=1, monitor=None,
                           auto_insert_metric_name=False)
    t = cfg.trainer
    max_time = {"minutes": t.max_minutes} if t.max_minutes else None
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=_precision(cfg), max_steps=max_steps or t.max_steps, max_time=max_time,
        val_check_interval=val_every or t.val_check_interval * accumulate, check_val_every_n_epoch=None,
        limit_val_batches=limit_val_batches or t.limit_val_batches, gradient_clip_val=None if manual else t.gradient_clip_val,
        accumulate_grad_batches=accumulate, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False,
        logger=_loggers(cfg, run_dir), callbacks=[ckpt, *callbacks], plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir, enable_model_summary=False)


@dataclass
class ModelToTrain:
    """What a run trains: a new model from the config, or a loaded one (continued or distilled)."""

    tokenizer: object
    method: Method
    algo: dict                # what the checkpoint records of the method
    noise: dict
    length: int
    backbone: torch.nn.Module
    splits: dict              # {'train', 'valid'} (duolm.app.data_settings.load_data)
    job: dict                 # what the checkpoints record of the job: {'kind': train | distill, 'from': teacher}

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.backbone)


def model_to_train(cfg, parts, init=None) -> ModelToTrain:
    """The model and its data: from `init` (a loaded Pretrained: its tokenizer, method and length;
    distilled from it, its reference is eval.checkpoint_path) or from the config (bad data fail
    here, before anything is written; image data bring their pixel tokenizer)."""
    if init is not None:
        backbone = build_backbone(init.backbone.config)
        backbone.load_state_dict(init.backbone.state_dict())
        _, splits = load_data(cfg, init.tokenizer, init.config["length"])
        distilling = cfg.get("distill") is not None and cfg.distill.get("enabled", False)
        job = {"kind": "distill" if distilling else "continue", "from": model_reference(cfg.eval.checkpoint_path)}
        return ModelToTrain(init.tokenizer, init.method, init.config["algo"], init.config["noise"],
                            init.config["length"], backbone, splits, job)
    tokenizer, splits = load_data(cfg, None if is_image_data(cfg) else load_tokenizer(cfg.data.tokenizer),
                                  cfg.model.length)
    method = parts.method(tokenizer.vocab_size)
    net_config = parts.backbone_config(method)
    backbone = build_backbone(net_config)
    method.check_backbone(backbone.capabilities)
    row = backbone_row(net_config.type)
    if row.initialise is not None:  # a pretrained network: its weights, not random ones
        row.initialise(backbone)
    return ModelToTrain(tokenizer, method, parts.algo, dict(cfg.noise), cfg.model.length, backbone, splits,
                        dict(TRAIN_JOB))


def lightning_module(cfg, model: ModelToTrain, objective) -> LitDiffusionLM:
    """The Lightning module: optim (the optimizer and its schedule), training.ema, eval.time_samples,
    and what its checkpoints record (the model's format, so `last.ckpt` exports and resumes)."""
    o, tok = cfg.optim, model.tokenizer
    augment = None
    if is_image_data(cfg) and cfg.data.get("flip"):
        augment = functools.partial(horizontal_flip, channels=tok.channels, image_size=tok.image_size)
    export_config = {"format": FORMAT, "algo": model.algo, "noise": model.noise, "tokenizer": tok.to_dict(),
                     "length": model.length, "training": training_of(model.method),
                     "data": _data_fingerprint(cfg, model.splits), "job": model.job}
    return LitDiffusionLM(objective, model.backbone, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay,
                          adam_eps=o.eps, warmup_steps=o.warmup_steps, lr_schedule=o.schedule,
                          max_steps=cfg.trainer.max_steps, ema_decay=cfg.training.ema,
                          global_batch_size=cfg.loader.global_batch_size, eval_time_samples=cfg.eval.time_samples,
                          export_config=export_config, seed=cfg.seed, augment=augment)


def data_module(cfg, splits: dict, batch: tuple[int, int, int]) -> BlockDataModule:
    """loader: the batches of each rank (batch: per-device, eval, accumulation from batch_plan)."""
    per_device, eval_bs, _ = batch
    ld = cfg.loader
    return BlockDataModule(splits["train"], splits["valid"], batch_size=per_device, eval_batch_size=eval_bs,
                           global_batch_size=ld.global_batch_size, seed=cfg.seed, num_workers=ld.num_workers,
                           prefetch_factor=ld.prefetch_factor, pin_memory=_pin_memory(cfg))


def resume_point(run_dir: Path, resume: bool, module: LitDiffusionLM) -> str | None:
    """run.resume: the checkpoint to continue from, once checked to be the same run (before anything
    in run.dir changes); the log rows after it are dropped. None: a fresh run."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not (resume and last.exists()):
        # a fresh start: rows an earlier run logged without leaving a checkpoint (stopped at once, or
        # killed) describe steps this run will take again; the history restarts with it
        dropped = drop_rows_after(run_dir / "logs" / "metrics.csv", -1)
        if dropped:
            print(f"duolm: starting at step 0; {dropped} rows an earlier run logged without a checkpoint are "
                  f"dropped from {run_dir / 'logs' / 'metrics.csv'}")
        return None
    saved = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    check_resumable(saved.get("duolm", {}), module.checkpoint_config(), run_dir)
    drop_rows_after(run_dir / "logs" / "metrics.csv", int(saved.get("global_step", 0)))
    return str(last)


def train(cfg, *, log=print, init=None, parts=None, callbacks=()) -> dict:
    """Train per cfg; returns the final report. Resumes from run.dir when a checkpoint is there.

    init: a loaded model (duolm.checkpoints.loading.Pretrained) to start from; with cfg.distill.enabled,
    the run is Discrete Consistency Distillation of that model (its tokenizer and length are used).
    parts: what duolm.app.config.validate built from cfg (built here when not given). callbacks: more
    Lightning callbacks (benchmarks time the steps with one).
    """
    if cfg.data.source in EVAL_ONLY:
        raise ValueError(f"data={cfg.data.name} is an evaluation-only (zero-shot) set: train on another "
                         f"corpus, then run duolm eval data={cfg.data.name}")
    parts = parts or validate(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = model_to_train(cfg, parts, init)
    distilling = model.job["kind"] == "distill"
    objective = build_objective(parts, model.method, model.backbone, distill_cfg=cfg.distill if distilling else None,
                                curriculum=init is None, antithetic=cfg.training.antithetic,
                                num_classes=model.num_classes)
    module = lightning_module(cfg, model, objective)
    dm = data_module(cfg, model.splits, parts.batch)
    run_dir = Path(cfg.run.dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = resume_point(run_dir, cfg.run.resume, module)
    run_dir.mkdir(parents=True, exist_ok=True)
    n_params, (per_device, _, accum), splits = module.backbone.num_parameters(), parts.batch, model.splits
    log(f"duolm: {model.method.name} | {n_params / 1e6:.2f}M parameters | vocab {model.tokenizer.vocab_size} | "
        f"{len(splits['train']) if hasattr(splits['train'], '__len__') else 'streamed'} train / "
        f"{len(splits['valid'])} valid blocks of {model.length} | "
        f"global batch {cfg.loader.global_batch_size} = {per_device} x {accum} accumulation"
        + (f" | resuming from {resume}" if resume else ""))
    if cfg.trainer.get("compile"):
        module.backbone.compile()  # in place (the DiT: its blocks): parameter names, so checkpoints, stay as they are
    stop = GracefulStop()
    if cfg.trainer.enable_progress_bar:
        callbacks = [StepProgress(cfg.loader.global_batch_size * model.length), *callbacks]
    trainer = build_trainer(cfg, run_dir, accum, [stop, *callbacks])
    t0 = time.perf_counter()
    with stop.installed():
        try:
            trainer.fit(module, dm, ckpt_path=resume)
        except NonFiniteLossError as err:
            kept = (f"the last good checkpoint is {last}" if last.exists()
                    else "no checkpoint had been written yet (run.checkpoint_every)")
            raise NonFiniteLossError(f"{err}; {kept}") from None
        except StoppedAtOnce as err:
            kept = (f"a rerun of the same command resumes from {last} (step "
                    f"{int(torch.load(last, map_location='cpu', weights_only=True, mmap=True)['global_step'])})"
                    if last.exists() else "no checkpoint had been written, so a rerun starts at step 0")
            raise StoppedAtOnce(f"{err} at step {trainer.global_step}; {kept}") from None
    train_seconds = time.perf_counter() - t0
    trainer.save_checkpoint(last)
    report = {"algo": model.method.name, "steps": trainer.global_step, "train_seconds": train_seconds,
              "parameters": n_params, "run_dir": str(run_dir), "checkpoint": str(last)}
    if stop.stopped:
        report["interrupted"] = True
    elif trainer.global_step < cfg.trainer.max_steps and cfg.trainer.max_minutes:
        report["stopped_by"] = "trainer.max_minutes"
    if trainer.global_rank == 0:
        model_dir = save_pretrained(run_dir / "model", module.ema_backbone(), algo=model.algo, noise=model.noise,
                                    tokenizer=model.tokenizer, length=model.length, training=training_of(model.method),
                                    extra={"data": cfg.data.name, "steps": trainer.global_step, "job": model.job})
        report["model_dir"] = str(model_dir)
        report["unigram_bits_per_token"] = unigram_entropy_bits(splits["valid"], model.tokenizer.vocab_size)
    return report
