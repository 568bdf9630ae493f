"""A checked GenerationRequest from a mapping of sampling settings: their one reader.

    request = request_from_settings({"steps": 8, "predictor": "psi", "psi": {"plateau": 0.2},
                                     "prefix": "The old", "num_samples": 4}, method=m, tokenizer=tok,
                                     length=128)

The keys, each optional (the defaults are SamplerSpec's and GenerationRequest's):
- predictor, steps, noise_removal, use_float64, p_nucleus, temperature, total_length, stride, stop_at_eos: the
  SamplerSpec's fields; `<predictor>`: a mapping of that sampler's own settings (its SAMPLERS row's
  options; the other samplers' blocks are not read);
- prefix (text held at the start) or chat (a user's message, framed by the tokenizer's chat template
  with the assistant's turn opened, as supervised fine-tuning framed it);
- infill (a template with [___] blanks) and blank_length;
- num_samples, batch_size, seed, classes (None: each class in turn; "none": the null label; a list of
  labels), guidance, trajectory, trajectory_predictions.

Everything a request can get wrong is checked here, against the model (its method, tokenizer,
length and classes), before any sampling: the sampler against the method, the length window, the
template, guidance and labels; a refusal is one SettingError sentence naming the field. The
`duolm sample` command's `sampling` group is this mapping; a server maps its request body onto it.
"""
from __future__ import annotations

from collections.abc import Mapping

from duolm.core.conditioning import check_labels
from duolm.data.instructions import prompt_ids
from duolm.data.tokenizers import is_image
from duolm.errors import SettingError
from duolm.sampling.generate import GenerationRequest
from duolm.sampling.guidance import check_guidance
from duolm.sampling.infill import parse_template
from duolm.sampling.registry import checked_spec, options_from_settings
from duolm.sampling.spec import SamplerSpec

SPEC_KEYS = ("predictor", "steps", "noise_removal", "use_float64", "p_nucleus", "temperature", "total_length",
             "stride", "stop_at_eos")


def check_one_start(settings: Mapping) -> None:
    """prefix and chat both say what a sample starts with: at most one is set."""
    if settings.get("prefix") and settings.get("chat"):
        raise SettingError("`request_from_settings.prefix` and `request_from_settings.chat` both set what a sample "
                           "starts with; set one of them")


def spec_from_settings(settings: Mapping, *, eps: float, prefix=None) -> SamplerSpec:
    """The SamplerSpec of the settings ('auto' left for SamplerSpec.resolve), with `prefix` ids held."""
    given = {k: settings[k] for k in SPEC_KEYS if settings.get(k) is not None}
    predictor = given.get("predictor", "auto")
    return SamplerSpec(**{**given, "stop_at_eos": bool(given.get("stop_at_eos", False))},
                       options=options_from_settings(predictor, settings), prefix=prefix, eps=eps)


def start_ids(settings: Mapping, tokenizer) -> list[int] | None:
    """The ids a sample starts from: the chat message in the template, or the prefix text (None: neither)."""
    if settings.get("chat"):
        try:
            return prompt_ids(tokenizer, messages=[{"role": "user", "content": str(settings["chat"])}])
        except ValueError as err:
            raise SettingError(f"`request_from_settings.chat`: {err}") from None
    if settings.get("prefix"):
        return prompt_ids(tokenizer, prompt=settings["prefix"])
    return None


def parse_classes(classes):
    """classes -> None (each class in turn), 'none' (the null label) or a list of labels."""
    if classes is None or classes == "none":
        return classes
    if isinstance(classes, int) and not isinstance(classes, bool):
        return [classes]
    items = list(classes) if not isinstance(classes, str) else None
    if items is None or not items or any(isinstance(c, bool) or not isinstance(c, int) for c in items):
        raise SettingError(f"`GenerationRequest.classes` must be null, none or a list of class labels, got {classes!r}")
    return items


def check_conditioning(guidance, classes, num_classes: int, method=None) -> None:
    """Guidance and labels need a class-conditional model; labels must be among its classes; the
    method must support guidance (method None: not known yet)."""
    if method is not None:
        check_guidance(method, guidance)
    if not num_classes:
        if guidance is not None:
            raise SettingError("`GenerationRequest.guidance` needs a class-conditional model; this model was trained "
                               "without labels")
        if classes is not None:
            raise SettingError("`GenerationRequest.classes` needs a class-conditional model; this model was trained "
                               "without labels")
        return
    labels = parse_classes(classes)
    if isinstance(labels, list):
        check_labels(labels, num_classes)
        if num_classes in labels:
            raise SettingError(f"`GenerationRequest.classes`: use none for unconditional samples, not the null label "
                               f"{num_classes}")


def request_from_settings(settings: Mapping, *, method, tokenizer, length: int, num_classes: int = 0
                          ) -> GenerationRequest:
    """The checked request the settings describe for a model (module docstring)."""
    check_one_start(settings)
    spec = spec_from_settings(settings, eps=method.sampling_eps, prefix=start_ids(settings, tokenizer))
    template = None
    if settings.get("infill"):
        if is_image(tokenizer):
            raise SettingError("`GenerationRequest.template` fills text templates; this is an image model")
        template = parse_template(settings["infill"], tokenizer, blank_length=settings.get("blank_length", 8),
                                  max_length=length)
    spec = checked_spec(spec, method, length, infill=template is not None)
    check_conditioning(settings.get("guidance"), settings.get("classes"), num_classes, method=method)
    return GenerationRequest(spec, length=length, num_samples=settings.get("num_samples", 8),
                             batch_size=settings.get("batch_size", 8), seed=settings.get("seed", 0),
                             classes=parse_classes(settings.get("classes")), guidance=settings.get("guidance"),
                             trajectory=settings.get("trajectory", 0),
                             predictions=bool(settings.get("trajectory_predictions", False)), template=template)


__all__ = ["check_conditioning", "check_one_start", "parse_classes", "request_from_settings", "spec_from_settings",
           "start_ids"]
