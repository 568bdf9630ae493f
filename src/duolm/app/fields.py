"""The library's fields -> the config keys a user writes: the one table that turns a library error
(duolm.errors.SettingError, which names `SamplerSpec.steps`) into the sentence a user of the `duolm`
command reads (naming sampling.steps). Derived from the library's dataclasses where a config group
mirrors one (SamplerSpec -> sampling.*, each sampler's options -> sampling.<sampler>.*); the rest
is listed."""
from __future__ import annotations

import functools
from dataclasses import fields
from functools import cache

from duolm.errors import SettingError
from duolm.models.dit import DiTConfig
from duolm.models.hf_lm import LORA_DEFAULTS, HFConfig
from duolm.models.unet import UNetConfig
from duolm.sampling.registry import SAMPLERS
from duolm.sampling.spec import SamplerSpec
from duolm.training.curriculum import CurriculumSchedule

LISTED = {
    "GenerationRequest.length": "model.length",
    "GenerationRequest.template": "sampling.infill",
    "GenerationRequest.trajectory": "sampling.trajectory",
    "GenerationRequest.predictions": "sampling.trajectory_predictions",
    "GenerationRequest.guidance": "sampling.guidance",
    "Template.blank_length": "sampling.blank_length",
    "KappaSchedule.high_frac": "sampling.psi.high_frac",
    "KappaSchedule.middle_frac": "sampling.psi.middle_frac",
    "PsiOptions.kappa": "sampling.psi",
    "Method.name": "algo",
    "Method.block_size": "algo.block_size",
    "Method.num_blocks.length": "model.length",
    "CurriculumSchedule.mode": "algo.curriculum.mode",
    "GenerationRequest.classes": "sampling.classes",
    "request_from_settings.prefix": "sampling.prefix",
    "request_from_settings.chat": "sampling.chat",
    "build_method.name": "algo.name",
    "build_method.num_steps": "algo.T",
    "build_backbone.type": "model.type",
    "Schedule.eps": "noise.eps",
    "make_schedule.name": "noise.type",
    "EMA.decay": "training.ema",
    "Nelbo.clip_min": "algo.clip_min",
    "Nelbo.clip_max": "algo.clip_max",
    "CurriculumSchedule.tau_log10_start": "algo.curriculum.gumbel_tau_log10_start",
    "CurriculumSchedule.tau_log10_end": "algo.curriculum.gumbel_tau_log10_end",
    "Distillation.kind": "distill.loss_type",
    "Distillation.teacher_from": "distill.teacher_from",
    "Distillation.gamma_min": "distill.gamma_min",
    "Distillation.gamma_max": "distill.gamma_max",
    "DeltaSchedule.growth": "distill.delta_growth",
    "DeltaSchedule.num_steps": "distill.T",
    "DeltaSchedule.update_every": "distill.update_teacher_every",
    "PixelTokenizer.image_size": "data.image_size",
    "PixelTokenizer.num_classes": "data.num_classes",
    # the image's shape and classes come from the data group
    "UNetConfig.channels": "data.channels",
    "UNetConfig.image_size": "data.image_size",
    "UNetConfig.num_classes": "data.num_classes",
    "DiTConfig.num_classes": "data.num_classes",
    # the data layer's entry points: build_splits (text), build_image_splits, load_tokenizer
    **{f"build_splits.{key}": f"data.{key}" for key in ("path", "valid_path", "format", "text_field", "source",
                                                        "blocks", "streaming", "cache_dir", "data_files",
                                                        "valid_fraction")},
    "build_splits.length": "model.length",
    "build_splits.dataset": "data",
    "load_tokenizer.spec": "data.tokenizer",
    "PixelTokenizer.levels": "data.levels",
    "PixelTokenizer.channels": "data.channels",
    "build_image_splits.num_classes": "data.num_classes",
    "score_image_samples.features": "eval.image_features",
    "check_inception.given": "eval.inception_weights",
    "score_samples_file.path": "eval.samples",
    "score_samples_file.scoring_model": "eval.scoring_model",
    "score_samples_file.mauve_texts": "eval.mauve_texts",
    "check_resumable.run_dir": "run.dir",
    "load_pretrained.algo": "algo",
    "load_pretrained.path": "eval.checkpoint_path",
    "DiffusionGemmaSettings.pretrained": "eval.checkpoint_path",
}


@cache
def config_keys() -> dict[str, str]:
    """library field -> config key."""
    keys = {f"SamplerSpec.{f.name}": f"sampling.{f.name}" for f in fields(SamplerSpec)}
    for network in (DiTConfig, UNetConfig, HFConfig):  # the model group mirrors each backbone's config
        keys.update({f"{network.__name__}.{f.name}": f"model.{f.name}" for f in fields(network)})
    keys.update({f"HFConfig.lora.{key}": f"model.lora.{key}" for key in LORA_DEFAULTS})
    keys.update({f"CurriculumSchedule.{f.name}": f"algo.curriculum.{f.name}" for f in fields(CurriculumSchedule)})
    for name, row in SAMPLERS.items():
        if row.options is not None:
            keys.update({f"{row.options.__name__}.{key}": f"sampling.{name}.{key}" for key in row.options.SETTINGS})
    keys.update(LISTED)
    return keys


def in_config_terms(function):
    """`function`, its SettingErrors said in config keys (a ValueError with the user's sentence): the
    Python API speaks the README's names, as the command does."""

    @functools.wraps(function)
    def said(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except SettingError as err:
            raise ValueError(config_message(err)) from None

    return said


def config_message(err: BaseException) -> str:
    """An error's sentence as a user of the command reads it: a SettingError in config keys, anything
    else as it is."""
    return err.render(config_keys()) if isinstance(err, SettingError) else str(err)
