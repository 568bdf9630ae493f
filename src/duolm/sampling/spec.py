"""SamplerSpec: everything a sampler needs besides the model, typed and checked once.

Built from the `sampling` config group by the application (duolm.app.sampling_settings) or by
hand (duolm.app.api.Model.spec); each field's check names the config key a user types, so a bad
value fails before any work. These checks are the only ones: the samplers trust a spec.
``resolve(method)`` fills the 'auto' choices with the method's defaults, for the CLI and the API alike.

A sampler's own settings are not fields here: its SAMPLERS row names an options type (a frozen
dataclass with the ``SamplerOptions`` members, in the sampler's file), read from ``sampling.<name>``
and carried as ``SamplerSpec.options``; adding a sampler adds no field to this class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Mapping, NamedTuple, Protocol

import torch

from duolm.errors import SettingError
from duolm.sampling.categorical import check_top_p
from duolm.sampling.semi_ar import check_windows

NOISE_REMOVAL = ("ancestral", "greedy", "none")
AUTO = "auto"  # predictor / noise_removal: the method's default (SamplerSpec.resolve)


def check_noise_removal(value: str) -> None:
    if value not in NOISE_REMOVAL:
        raise SettingError(f"`SamplerSpec.noise_removal` must be one of {list(NOISE_REMOVAL)}, got {value!r}")


def output_of(method) -> str:
    """What a method's network gives: 'x0' (log p(x_0 | x_t)), 'score' (SEDD's log score) or 'ar'
    (next-token logits); a key of duolm.sampling.registry.NEEDS, declared by its parameterisation."""
    return method.output_kind


def default_predictor(method) -> str:
    """The sampler a method uses when sampling.predictor=auto."""
    return {"ar": "ar", "score": "analytic"}.get(output_of(method), "ancestral")


def default_noise_removal(method) -> str:
    """The last step a method uses when sampling.noise_removal=auto."""
    return "ancestral" if output_of(method) == "score" else "greedy"


class Setting(NamedTuple):
    """One key of a sampler's config block: its default and the line that explains it (the YAML
    comment and `duolm sample --help` show it)."""

    default: object
    help: str


class SamplerOptions(Protocol):
    """A sampler's own settings (e.g. duolm.sampling.psi.PsiOptions): checked when built."""

    SETTINGS: ClassVar[dict[str, Setting]]  # the keys of sampling.<sampler name>, in order

    @classmethod
    def from_settings(cls, settings: Mapping) -> "SamplerOptions": ...  # the config block's values -> options

    def describe(self) -> dict: ...  # what a samples file records of them


class SettingsBlock:
    """The plain reading of a SamplerOptions dataclass: its SETTINGS' keys from the config block (their
    defaults where absent), and all its fields recorded as they are."""

    SETTINGS: ClassVar[dict[str, Setting]]

    @classmethod
    def from_settings(cls, settings: Mapping):
        return cls(**{k: settings.get(k, v.default) for k, v in cls.SETTINGS.items()})

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplerSpec:
    predictor: str = "ancestral"          # a name in duolm.sampling.SAMPLERS, or auto (resolve)
    steps: int = 64                       # updates from t = 1 to eps; the noise-removal call comes after
    noise_removal: str = "greedy"         # ancestral | greedy | none, or auto (resolve)
    use_float64: bool = True             # float64 categorical draws; false: the papers' float32 race (lower entropy)
    p_nucleus: float = 1.0
    options: SamplerOptions | None = None  # the predictor's own settings (its SAMPLERS row's type; None: defaults)
    prefix: tuple[int, ...] | None = None  # token ids held fixed at the start
    eps: float = 1e-3
    total_length: int | None = None       # > model length: semi-autoregressive windows
    stride: int | None = None             # new tokens per window (default: half the window)
    stop_at_eos: bool = False
    temperature: float = 1.0              # p(x_0 | x_t) (AR: the next token) ~ p^(1/T); 0: its argmax

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise SettingError(f"`SamplerSpec.steps` must be an integer >= 1, got {self.steps!r}")
        if self.noise_removal != AUTO:
            check_noise_removal(self.noise_removal)
        check_top_p(self.p_nucleus)
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 10:
            raise SettingError(f"`SamplerSpec.temperature` must be a number from 0 (the argmax) to 10, got {t!r}")
        if self.prefix is not None:
            object.__setattr__(self, "prefix", tuple(int(i) for i in self.prefix))

    def resolve(self, method) -> "SamplerSpec":
        """This spec with 'auto' replaced by the method's sampler and last step."""
        return replace(self, predictor=default_predictor(method) if self.predictor == AUTO else self.predictor,
                       noise_removal=default_noise_removal(method) if self.noise_removal == AUTO
                       else self.noise_removal)

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the sampler's probabilities."""
        return torch.float64 if self.use_float64 else torch.float32

    def check_length(self, length: int) -> None:
        """The settings that depend on the model's length window."""
        check_windows(length, self.total_length, self.stride)
        if self.prefix and len(self.prefix) >= length:
            raise SettingError(f"`SamplerSpec.prefix` is {len(self.prefix)} tokens; the model's length is {length}")

    def describe(self) -> dict:
        """The spec as a samples file records it: its fields, and the options' own keys beside them."""
        d = asdict(replace(self, options=None))
        del d["options"]
        d["prefix"] = list(self.prefix) if self.prefix is not None else None
        if self.options is not None:
            d.update(self.options.describe())
        return d
