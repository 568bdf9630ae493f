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
from duolm.sampling.registry import SAMPLERS
from duolm.sampling.spec import SamplerSpec

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
    "HFConfig.shift": "model.shift",
}


@cache
def config_keys() -> dict[str, str]:
    """library field -> config key."""
    keys = {f"SamplerSpec.{f.name}": f"sampling.{f.name}" for f in fields(SamplerSpec)}
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
