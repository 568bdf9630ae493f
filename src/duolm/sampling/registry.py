"""The sampler table: name -> Sampler (how to run it from a SamplerSpec, and what it needs).

Adding a sampler is one file with its function, a ``from_spec`` adapter and, if it has settings of
its own, their options type (duolm.sampling.spec.SamplerOptions), plus one row here. The row's
options are the keys of ``sampling.<name>``: the application reads them from there, and
``conf/sampling/default.yaml`` and `duolm sample --help` show them (a test checks that the YAML
block agrees with the row). ``check_sampler`` is the one place that decides whether a sampler fits a
method, so the config check, the CLI and the library agree.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from duolm.core.conditioning import null_labels, with_labels
from duolm.errors import SettingError
from duolm.sampling import analytic, ancestral, ar, confidence, ddim, entropy_bound, psi
from duolm.sampling.guidance import check_guidance, guided_denoiser
from duolm.sampling.spec import AUTO, NOISE_REMOVAL, SamplerSpec, default_predictor, output_of

# what a method's network gives, by method: log p(x_0 | x_t), SEDD's log score, or next-token logits
NEEDS = {"x0": "x_0 probabilities from a diffusion denoiser (algo=mdlm, d3pm, duo_base or duo)",
         "score": "a score model (algo=sedd)", "ar": "a causal model (algo=ar)"}


@dataclass
class SamplingModel:
    """What every sampler reads: the denoiser (duolm.contracts.Denoiser; SEDD's log score for
    'score'), the process and schedule it was trained with, and for AR the causal backbone."""

    denoiser: Callable | None
    process: object | None
    schedule: object | None
    output: str                          # a key of NEEDS
    backbone: torch.nn.Module | None = None
    vocab_size: int | None = None        # AR: the output rows that are tokens
    method: object | None = None         # what built the denoiser (samplers that call the backbone
    labels: torch.Tensor | None = None   # themselves, as the approximate cache does, rebuild it)
    guided: bool = False
    temperature: float = 1.0             # AR: the next token's (x_0 samplers get a tempered denoiser)

    @property
    def conditioning(self):
        """The network call a sampler feeds its chosen self-conditioning (duolm.sampling.blocks.CachedBlock.feed),
        when the backbone declares self-conditioning; None otherwise."""
        net = self.backbone
        return net if net is not None and net.capabilities.self_conditioning else None

    @classmethod
    def from_method(cls, method, backbone=None, *, labels: torch.Tensor | None = None,
                    guidance: float | None = None) -> "SamplingModel":
        """labels (B,): a class-conditional backbone's classes (its null label: unconditional);
        guidance: the classifier-free guidance weight (None or 1: the conditional model)."""
        output = output_of(method)
        den = None
        if backbone is not None and output != "ar":
            den = ancestral.denoiser_from(method, with_labels(backbone, labels))
            if labels is not None and guidance is not None and guidance != 1.0:
                check_guidance(method, guidance)
                null = null_labels(len(labels), backbone.config.num_classes, labels.device)
                den = guided_denoiser(den, ancestral.denoiser_from(method, with_labels(backbone, null)),
                                      float(guidance))
        return cls(den, method.process, method.schedule, output, backbone=backbone, vocab_size=method.vocab_size,
                   method=method, labels=labels, guided=guidance is not None and guidance != 1.0)


def tempered(model: SamplingModel, temperature: float) -> SamplingModel:
    """The model a sampler draws from at `temperature`: log p(x_0 | x_t) / T renormalised (T = 0: all
    mass on the argmax), or for AR the next token's logits / T. T = 1: the model itself."""
    if temperature == 1:
        return model
    if model.output == "ar":
        return replace(model, temperature=float(temperature))
    den = model.denoiser

    def denoiser(x_t, alpha_t):
        log_p = den(x_t, alpha_t)
        if temperature == 0:  # -1e4, not -inf: samplers take p * log p of these rows
            top = log_p.argmax(-1, keepdim=True)
            return torch.full_like(log_p, -1e4).scatter(-1, top, 0.0)
        wide = log_p.to(torch.promote_types(log_p.dtype, torch.float32))  # half precision read in float32
        return torch.log_softmax(wide / temperature, dim=-1).to(log_p.dtype)

    return replace(model, denoiser=denoiser)


@dataclass(frozen=True)
class Sampler:
    """run(model: SamplingModel, spec, shape, *, bos_id, fixed, generator, device, disable_progress, observer)
    -> (B, L) token ids. strategies: the ways of generating it supports (duolm.sampling.strategy)."""

    run: Callable
    needs: str                                   # a key of NEEDS
    noise_removal: tuple[str, ...] = NOISE_REMOVAL
    reuses_output: bool = False                  # valid only when the denoiser ignores alpha_t
    holds_positions: bool = True                 # can keep given tokens fixed (prefix, semi-AR windows)
    check: Callable[[SamplerSpec, object], None] | None = None  # (spec, schedule): sampler-specific settings
    options: type | None = None                  # its own settings (SamplerOptions), read from sampling.<name>
    exact: bool = True                           # draws the model's distribution as steps grow (False: a heuristic)
    strategies: tuple[str, ...] = ("window", "windows", "blocks")  # duolm.sampling.strategy.STRATEGIES
    processes: tuple[str, ...] = ("absorbing", "uniform")  # the forward processes it samples (Process.kind)
    # the processes ("absorbing", "uniform"; "autoregressive" for AR) on which it draws through
    # duolm.core.randomness and only for the rows that need a draw, so that with a generator per row
    # (RowStreams) a row draws what it would alone (draws for rows already finished break that)
    row_streams: tuple[str, ...] = ()


SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(ancestral.from_spec, needs="x0", row_streams=("absorbing", "uniform")),
    "ancestral_cache": Sampler(ancestral.from_spec, needs="x0", reuses_output=True, row_streams=("absorbing",)),
    "psi": Sampler(psi.from_spec, needs="x0", check=psi.check_spec, options=psi.PsiOptions,
                   row_streams=("absorbing", "uniform")),
    # a uniform-state model's steps draw for rows already committed: masked models only
    "confidence": Sampler(confidence.from_spec, needs="x0", options=confidence.ConfidenceOptions, exact=False,
                          row_streams=("absorbing",)),
    "entropy_bound": Sampler(entropy_bound.from_spec, needs="x0", options=entropy_bound.EntropyBoundOptions,
                             exact=False),
    # exact only with the full posterior p(x_0^i | x_t) as denoiser, which Duo's objective does not train
    # (its optimum leaves x_t^i out): a heuristic for duolm's models, diffusers' sampler for DiffusionGemma
    "ddim": Sampler(ddim.from_spec, needs="x0", options=ddim.DDIMOptions, processes=("uniform",), exact=False),
    "analytic": Sampler(analytic.from_spec, needs="score", noise_removal=("ancestral", "none"), holds_positions=False,
                        strategies=("window",)),
    "ar": Sampler(ar.from_spec, needs="ar", noise_removal=NOISE_REMOVAL, strategies=("autoregressive",),
                  row_streams=("autoregressive",)),
}


def draws_by_row(predictor: str, method) -> bool:
    """Whether `predictor` on `method` can draw each row from its own generator (RowStreams)."""
    kind = method.process.kind if method.process is not None else "autoregressive"
    return kind in SAMPLERS[predictor].row_streams


def check_sampler(spec: SamplerSpec, method=None) -> None:
    """Raise one ValueError sentence naming the key when spec cannot sample from method (None: the
    model is not known yet, so only that the sampler exists)."""
    if spec.predictor not in SAMPLERS and spec.predictor != AUTO:
        raise SettingError(f"`SamplerSpec.predictor` must be one of {[AUTO, *SAMPLERS]}, got {spec.predictor!r}")
    if method is None:
        return
    spec = spec.resolve(method)
    entry = SAMPLERS[spec.predictor]
    if entry.needs != output_of(method):
        raise SettingError(f"`SamplerSpec.predictor`={spec.predictor} needs {NEEDS[entry.needs]}, not `Method.name`={method.name}; "
                         f"`Method.name`={method.name} samples with `SamplerSpec.predictor`={default_predictor(method)}")
    if method.process is not None and method.process.kind not in entry.processes:
        raise SettingError(f"`SamplerSpec.predictor`={spec.predictor} samples {' or '.join(entry.processes)}-state "
                           f"models, not `Method.name`={method.name} ({method.process.kind})")
    if spec.noise_removal not in entry.noise_removal:
        why = " (a score model (sedd) gives no x_0 probabilities for it)" if entry.needs == "score" else ""
        raise SettingError(f"`SamplerSpec.noise_removal`={spec.noise_removal} needs x_0 probabilities{why}; use one of "
                         f"{list(entry.noise_removal)} with `SamplerSpec.predictor`={spec.predictor}")
    if entry.reuses_output and method.time_conditioning:
        raise SettingError(f"`SamplerSpec.predictor`={spec.predictor} reuses the denoiser output, which is only valid for a "
                         f"model without time conditioning (`Method.name`=mdlm)")
    if spec.options is not None and not (entry.options and isinstance(spec.options, entry.options)):
        raise SettingError(f"`SamplerSpec.predictor`={spec.predictor} takes "
                         f"{'no options' if entry.options is None else entry.options.__name__}, "
                         f"not {type(spec.options).__name__}")
    if entry.check is not None:
        entry.check(spec, method.schedule)
    if spec.temperature != 1:
        if entry.needs == "score":
            raise SettingError(f"`SamplerSpec.temperature`={spec.temperature} tempers x_0 probabilities, which a score "
                               f"model (`Method.name`={method.name}) does not give; use 1")
        if isinstance(spec.options, confidence.ConfidenceOptions) and spec.options.cache != "none":
            raise SettingError(f"`SamplerSpec.temperature`={spec.temperature}: the approximate cache "
                               f"(`ConfidenceOptions.cache`={spec.options.cache}) calls the network itself; use cache "
                               f"none or temperature 1")
    if spec.total_length is not None and entry.needs == "ar":
        raise SettingError("`SamplerSpec.total_length` is for diffusion models; AR samples up to `GenerationRequest.length` here")
    if not entry.holds_positions and (spec.prefix or spec.total_length is not None):
        raise SettingError(f"`SamplerSpec.predictor`={spec.predictor} cannot hold tokens fixed, so `SamplerSpec.prefix` and "
                         f"`SamplerSpec.total_length` are not available with it")


def checked_spec(spec: SamplerSpec, method, length: int | None = None, *, infill: bool = False) -> SamplerSpec:
    """`spec` resolved for `method` ('auto' filled), checked against it and, given the model's
    length window, against that; infill: it will fill a template (check_infill). The one path
    from settings to a runnable spec, for the CLI and the API alike."""
    spec = spec.resolve(method)
    check_sampler(spec, method)
    if length is not None:
        spec.check_length(length)
        if infill:
            check_infill(spec, method, length)
    return spec


def sampler_settings() -> list[tuple[str, str, object]]:
    """(sampler, key, Setting) for every setting the rows declare, in table order."""
    return [(name, key, s) for name, entry in SAMPLERS.items() if entry.options is not None
            for key, s in entry.options.SETTINGS.items()]


def options_help() -> list[str]:
    """One line per sampler setting, `sampling.<sampler>.<key> (default): help`, from the rows."""
    return [f"sampling.{name}.{key} ({s.default}): {s.help}" for name, key, s in sampler_settings()]


def options_from_settings(predictor: str, sampling) -> object | None:
    """The options of `predictor` from the sampling block's `sampling.<predictor>` mapping (None:
    a sampler without options, or 'auto', whose defaults have none)."""
    entry = SAMPLERS.get(predictor)
    if entry is None or entry.options is None:
        return None
    return entry.options.from_settings(sampling.get(predictor) or {})


def check_infill(spec: SamplerSpec, method, length: int) -> None:
    """Infilling holds the template's text: a diffusion sampler that can hold positions, one window."""
    if method.is_autoregressive:
        raise SettingError("`GenerationRequest.template` needs a diffusion model; an AR model (`Method.name`=ar) only continues text")
    if not SAMPLERS[spec.predictor].holds_positions:
        raise SettingError(f"`GenerationRequest.template` holds the template's text fixed, which `SamplerSpec.predictor`="
                         f"{spec.predictor} cannot do; use ancestral or psi")
    if spec.prefix or (spec.total_length and spec.total_length > length):
        raise SettingError("`GenerationRequest.template` fills one window of the model: drop `SamplerSpec.prefix` and "
                         "`SamplerSpec.total_length` (the template's text is the prompt)")

