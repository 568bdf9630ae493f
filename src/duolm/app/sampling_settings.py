"""The `sampling` config group -> a typed SamplerSpec (and an infilling template): the only place
the application reads sampler settings. Every check lives in the library (SamplerSpec's fields,
the sampler table's check_sampler, the template parser); this file only maps keys to arguments."""
from __future__ import annotations

from duolm.data.instructions import prompt_ids
from duolm.data.tokenizers import is_image
from duolm.sampling import SamplerSpec, checked_spec
from duolm.sampling.infill import Template, parse_template
from duolm.sampling.registry import options_from_settings


def spec_from_config(sampling, method, tokenizer=None) -> SamplerSpec:
    """The spec of the `sampling` group, 'auto' left for SamplerSpec.resolve. Its last time is the
    method's own sampling_eps: a model samples down to the time floor it was trained with."""
    prefix = None  # prefix and chat together were refused once, at validation (check_one_start)
    if sampling.get("prefix") or sampling.get("chat"):
        if tokenizer is None:
            raise ValueError(f"sampling.{'chat' if sampling.get('chat') else 'prefix'} needs the tokenizer")
        prefix = chat_prefix(sampling, tokenizer) or prompt_ids(tokenizer, prompt=sampling.prefix)
    # only the chosen sampler's block (sampling.<predictor>) is read: the others' settings are ignored
    return SamplerSpec(predictor=sampling.predictor, steps=sampling.steps, noise_removal=sampling.noise_removal,
                       use_float64=sampling.use_float64, p_nucleus=sampling.p_nucleus,
                       options=options_from_settings(sampling.predictor, sampling), prefix=prefix,
                       eps=method.sampling_eps, total_length=sampling.get("total_length"),
                       stride=sampling.get("stride"), stop_at_eos=bool(sampling.get("stop_at_eos", False)))


def check_one_start(sampling) -> None:
    """sampling.prefix and sampling.chat both say what a sample starts with: at most one is set."""
    if sampling.get("prefix") and sampling.get("chat"):
        raise ValueError("sampling.prefix and sampling.chat both set what a sample starts with; set one of them")


def chat_prefix(sampling, tokenizer) -> list[int] | None:
    """sampling.chat, a user's message, as the ids a reply is generated after (its chat template
    with the assistant's turn opened, as supervised fine-tuning framed it); None when unset."""
    if not sampling.get("chat"):
        return None
    try:
        return prompt_ids(tokenizer, messages=[{"role": "user", "content": str(sampling.chat)}])
    except ValueError as err:
        raise ValueError(f"sampling.chat: {err}") from None


def spec_for_model(sampling, pre) -> SamplerSpec:
    """The checked, resolved spec of the `sampling` group for a loaded model (Pretrained)."""
    return checked_spec(spec_from_config(sampling, pre.method, pre.tokenizer), pre.method, pre.config["length"])


def template_from_config(sampling, pre) -> Template | None:
    """sampling.infill parsed against the loaded model's tokenizer and length (None: no template)."""
    if not sampling.get("infill"):
        return None
    if is_image(pre.tokenizer):
        raise ValueError("sampling.infill fills text templates; this is an image model")
    return parse_template(sampling.infill, pre.tokenizer, blank_length=sampling.get("blank_length", 8),
                          max_length=pre.config["length"])
