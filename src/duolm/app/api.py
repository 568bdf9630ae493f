"""duolm in three lines:

    m = duolm.load("builtin:duo-bigtxt-dcd")          # a built-in name, a folder, a .ckpt, a hub id
    m.generate(n=4, steps=8, prompt="the old man", sampler="psi").texts
    m.infill("the [___] sat on the [___:3] mat").texts ; m.nelbo(["some text"])

A thin layer over the library: `duolm.checkpoints.loading.load_pretrained`, `SamplerSpec` and the sampler
table (`checked_spec`), `duolm.sampling.infill` and `duolm.evaluation.likelihood.continuation_nelbo`. Every
bad argument gets one sentence naming it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from duolm.app.fields import in_config_terms
from duolm.checkpoints.loading import load_pretrained
from duolm.data.instructions import prompt_ids, reply_ids
from duolm.data.tokenizers import is_image
from duolm.evaluation.likelihood import continuation_nelbo
from duolm.sampling import KappaSchedule, SamplerSpec, checked_spec
from duolm.sampling.generate import GenerationRequest, decode_text, generate
from duolm.sampling.infill import parse_template
from duolm.sampling.registry import options_from_settings, sampler_settings


@dataclass
class Generation:
    texts: list[str]
    ids: list[list[int]]
    spans: list[list[dict]] = field(default_factory=list)  # infill: the generated {start, end, text} per sample
    result: dict = field(default_factory=dict, repr=False)  # the full JSON-ready result (settings, timing)


@dataclass
class Score:
    """The NELBO of one text: a sum over its tokens, in nats (per_token / bits_per_token divide it)."""
    nelbo: float   # -log p(text) bound summed over the text's tokens, nats (exact NLL for AR)
    se: float      # Monte Carlo standard error of that sum (0 for AR)
    tokens: int

    def __repr__(self) -> str:
        return (f"Score(nelbo={self.nelbo:.4g} nats summed over {self.tokens} tokens ± {self.se:.2g}, "
                f"{self.per_token:.4g} nats/token = {self.bits_per_token:.4g} bits/token)")

    @property
    def per_token(self) -> float:
        return self.nelbo / max(1, self.tokens)

    @property
    def bits_per_token(self) -> float:
        return self.per_token / math.log(2)


class Model:
    """A loaded model with generate / infill / nelbo; `pretrained` keeps the library objects."""

    def __init__(self, pretrained, device=None):
        self.pretrained = pretrained
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pretrained.backbone.to(self.device).eval()

    @property
    def method(self):
        return self.pretrained.method

    @property
    def tokenizer(self):
        return self.pretrained.tokenizer

    @property
    def length(self) -> int:
        return self.pretrained.config["length"]

    def __repr__(self) -> str:
        return (f"duolm.Model({self.method.name}, {self.pretrained.backbone.num_parameters() / 1e6:.2f}M parameters, "
                f"length {self.length}, vocabulary {self.tokenizer.vocab_size})")

    # --- sampling ---------------------------------------------------------------------------
    @in_config_terms
    def spec(self, *, steps: int = 64, sampler: str = "auto", noise_removal: str = "auto", kappa=None,
             p_nucleus: float = 1.0, prompt_ids=None, total_length: int | None = None, infill: bool = False,
             **options):
        """The SamplerSpec these keywords describe, checked against the model (one sentence on error).
        Keywords that are not SamplerSpec fields are the sampler's own settings (its SAMPLERS row's
        keys, e.g. psi's time_profile, plateau, high_mode); kappa (psi): a mode string for every part
        ('max-capped-0.02') or a KappaSchedule. The spec's last time is the model's own sampling_eps
        (the floor it was trained with) unless `eps` is given."""
        fields = {f.name for f in dataclasses.fields(SamplerSpec)}
        own = {k: options.pop(k) for k in list(options) if k not in fields}
        if isinstance(kappa, str):
            own.update(high_mode=kappa, middle_mode=kappa, low_mode=kappa)
        # options_from_settings reads the block `sampling.<sampler>`, as the CLI's config holds it
        sampler_options = options_from_settings(sampler, {sampler: own}) if own or kappa is not None else None
        if (own or kappa is not None) and sampler_options is None:
            raise ValueError(f"sampler={sampler} has no settings {sorted(own) or ['kappa']}; the settings of each sampler: "
                             f"{[f'{name}.{key}' for name, key, _ in sampler_settings()]}")
        if isinstance(kappa, KappaSchedule):
            sampler_options = dataclasses.replace(sampler_options, kappa=kappa)
        options.setdefault("eps", self.method.sampling_eps)
        spec = SamplerSpec(predictor=sampler, steps=steps, noise_removal=noise_removal, p_nucleus=p_nucleus,
                           prefix=prompt_ids, total_length=total_length, options=sampler_options, **options)
        return checked_spec(spec, self.method, self.length, infill=infill)

    @in_config_terms
    def generate(self, n: int = 1, *, steps: int = 64, prompt: str | None = None, sampler: str = "auto",
                 length: int | None = None, seed: int = 0, batch_size: int = 16, progress: bool = False,
                 **options) -> Generation:
        """n samples (texts and ids). prompt: text held at the start; length > the model's window:
        semi-autoregressive windows. Other keywords: noise_removal, kappa, p_nucleus, and any
        SamplerSpec field (stride, stop_at_eos, use_float64, ...) or setting of the sampler (psi: time_profile, plateau, ...)."""
        if is_image(self.tokenizer):
            raise ValueError("generate() writes text; this is an image model: use `duolm sample` for its grid")
        held = None if prompt is None else prompt_ids(self.tokenizer, prompt=prompt)
        spec = self.spec(steps=steps, sampler=sampler, prompt_ids=held,
                         total_length=length if length and length > self.length else None, **options)
        request = GenerationRequest(spec, length=self.length, num_samples=n, batch_size=batch_size, seed=seed)
        res = generate(self.method, self.pretrained.backbone, self.tokenizer, request, device=self.device,
                       progress=progress)
        if length and length < self.length:  # a shorter request: the first `length` tokens
            for smp in res["samples"]:
                smp["ids"] = smp["ids"][:length]
                smp["text"] = decode_text(self.tokenizer, smp["ids"])
        return Generation([s["text"] for s in res["samples"]], [s["ids"] for s in res["samples"]], result=res)

    @in_config_terms
    def chat(self, messages: list[dict], *, n: int = 1, steps: int = 64, sampler: str = "auto", seed: int = 0,
             batch_size: int = 16, progress: bool = False, **options) -> Generation:
        """n replies to a conversation [{'role', 'content'}, ...]: the messages formatted by the
        tokenizer's chat template (with the assistant's turn opened) are held clean at the start of
        the window, the rest is generated, and each reply is cut at its first end-of-text token.
        Needs a tokenizer with a chat template (model=hf from an instruction-tuned base)."""
        prompt = prompt_ids(self.tokenizer, messages=messages)  # as supervised fine-tuning framed it
        if len(prompt) >= self.length:
            raise ValueError(f"the conversation is {len(prompt)} tokens in the chat template; the model's window is "
                             f"{self.length}: nothing is left for the reply")
        spec = self.spec(steps=steps, sampler=sampler, prompt_ids=prompt, **options)
        request = GenerationRequest(spec, length=self.length, num_samples=n, batch_size=batch_size, seed=seed)
        res = generate(self.method, self.pretrained.backbone, self.tokenizer, request, device=self.device,
                       progress=progress)
        ids = [reply_ids(self.tokenizer, smp["ids"], len(prompt)) for smp in res["samples"]]
        return Generation([self.tokenizer.decode(r) for r in ids], ids, result=res)

    @in_config_terms
    def infill(self, template: str, *, n: int = 1, steps: int = 64, sampler: str = "auto", blank_length: int = 8,
               seed: int = 0, batch_size: int = 16, progress: bool = False, **options) -> Generation:
        """Fill the blanks of `template` ('[___]', or '[___:n]' for n tokens): texts, ids of the
        template's positions, and each sample's generated character spans."""
        if is_image(self.tokenizer):
            raise ValueError("infill() fills text templates; this is an image model")
        tpl = parse_template(template, self.tokenizer, blank_length=blank_length, max_length=self.length,
                             key="template")
        spec = self.spec(steps=steps, sampler=sampler, infill=True, **options)
        request = GenerationRequest(spec, length=self.length, num_samples=n, batch_size=batch_size, seed=seed,
                                    template=tpl)
        res = generate(self.method, self.pretrained.backbone, self.tokenizer, request, device=self.device,
                       progress=progress)
        return Generation([s["text"] for s in res["samples"]], [s["ids"][:tpl.length] for s in res["samples"]],
                          [s["spans"] for s in res["samples"]], result=res)

    # --- likelihood -------------------------------------------------------------------------
    def nelbo(self, texts, *, num_mc_samples: int = 8, seed: int = 0, batch_size: int = 16,
              context: str | None = None) -> list[Score]:
        """Each text's -log p bound in nats (exact NLL for AR) with its Monte Carlo standard error,
        after the BOS token (and `context`, held clean, when given). Texts longer than the model are
        scored window by window."""
        if isinstance(texts, str):
            texts = [texts]
        if is_image(self.tokenizer):
            raise ValueError("nelbo() scores text; this is an image model: use `duolm eval` for bits per pixel")
        tok = self.tokenizer
        ctx = [tok.bos_id] + (tok.encode(context) if context else [])
        pairs = [(ctx, tok.encode(t)) for t in texts]
        if any(not cont for _, cont in pairs):
            raise ValueError("nelbo() got an empty text")
        out = continuation_nelbo(self.method, self.pretrained.backbone, pairs, length=self.length, pad_id=tok.pad_id,
                                 num_samples=num_mc_samples, seed=seed, batch_size=batch_size, device=self.device)
        return [Score(r["nelbo"], r["se"], r["tokens"]) for r in out]


def load(name_or_path, *, device=None, **hints) -> Model:
    """Any model the one loader takes (duolm.checkpoints.loading.load_pretrained: built-in names, folders, run
    checkpoints, the papers' files, hub ids), ready to generate, infill and score."""
    return Model(load_pretrained(name_or_path, **hints), device=device)


__all__ = ["Generation", "Model", "Score", "load"]
