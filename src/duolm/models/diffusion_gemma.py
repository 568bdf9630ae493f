"""DiffusionGemma (transformers' DiffusionGemmaForBlockDiffusion) as a duolm backbone (`model=diffusion_gemma`).

    net = DiffusionGemma.from_folder("path/to/diffusiongemma")   # transformers' own class and weights
    cache = net.new_cache()
    net(prompt, cache=cache, store_kv=True)                 # the causal encoder reads the prompt
    logits = net(canvas, cache=cache, store_kv=False, position_offset=len(cache), self_cond=previous)

The network is transformers' class, untouched: a causal **encoder** reads the prompt and every
finished canvas into a key-value cache; a bidirectional **decoder** (the same weights) denoises a
canvas of `canvas_length` tokens that attends to that cache and to itself, with a
**self-conditioning** block that adds the previous step's soft prediction to its input. There is no
noise-level input: sigma is ignored. Under duolm's contract (duolm.contracts.Backbone) that is:

- ``encoder_prefix``: forward(x, cache=, store_kv=True) is the encoder's pass (the tokens are kept
  in the cache; ``attn_mask`` (B, L) bool marks which are tokens, the rest left padding, as
  transformers' ``attention_mask``); forward(x, cache=, store_kv=False) is the decoder's (the cache
  is read, not extended). Without a cache there is nothing for the decoder to read: refused.
- ``self_conditioning``: forward(self_cond=logits) feeds the previous step's logits (B, L, V).
- ``kv_cache``: DiffusionGemmaCache, transformers' DynamicCache (with its sliding-window layers)
  behind duolm's KVCache, plus which cached keys are padding.

Positions continue after the cache (``position_offset``), as generate() numbers them: padding
included. The logits are transformers' (soft-capped, float32), so duolm's samplers and transformers'
generate() see the same numbers (tests/test_diffusion_gemma.py reproduces generate() token for token).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from duolm.contracts import Capabilities, CapabilityError
from duolm.errors import SettingError
from duolm.models.hf_lm import SNAPSHOT_FILES, check_lora
from duolm.models.hf_lm import base_folder as hf_base_folder

# LoRA's default targets: the text layers' attention projections and their experts' weights (encoder
# and decoder alike: they share their weights, and their adapters too); the vision tower is left alone
ATTENTION = r".*(language_model|decoder)\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]

MODEL_TYPE = "diffusion_gemma"


@dataclass
class DiffusionGemmaSettings:
    """The network's config: the transformers config it is built from and where its weights came from."""

    vocab_size: int = 2                     # the method's states: the text config's vocabulary (2: not known yet)
    pretrained: str = ""                    # the folder or hub id of the weights ("" : random, a tiny test model)
    hf_config: dict = field(default_factory=dict)  # transformers' DiffusionGemmaConfig, as a dict
    attn_implementation: str = "sdpa"       # transformers' attention kernel (sdpa | eager)
    init: str = "pretrained"                # "random": the architecture from random weights
    lora: dict | None = None                # {r, alpha, dropout, target_modules}: adapters only (None: full)
    num_classes: int = 0                    # unconditional (no class labels)
    type: str = MODEL_TYPE

    def __post_init__(self):
        self.lora = check_lora(self.lora, field="DiffusionGemmaSettings.lora")
        if self.num_classes:
            raise SettingError("`DiffusionGemmaSettings.num_classes`: DiffusionGemma is unconditional (no class labels)")
        if self.hf_config.get("model_type") != MODEL_TYPE:
            raise SettingError(f"`DiffusionGemmaSettings.pretrained`={self.pretrained!r}: its config.json is not a "
                               f"DiffusionGemma config (model_type {self.hf_config.get('model_type')!r})")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise SettingError(f"`DiffusionGemmaSettings.attn_implementation` must be one of ['sdpa', 'eager'], "
                               f"got {self.attn_implementation!r}")
        if self.init not in ("pretrained", "random"):
            raise SettingError(f"`DiffusionGemmaSettings.init` must be one of ['pretrained', 'random'], got {self.init!r}")
        own = (self.hf_config.get("text_config") or {}).get("vocab_size")
        if self.vocab_size != 2 and own is not None and self.vocab_size != own:
            raise SettingError(f"`DiffusionGemmaSettings.vocab_size`: the tokenizer gives {self.vocab_size} tokens but "
                               f"the network has {own}; train with the model's own tokenizer (its folder)")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def canvas_length(self) -> int:
        return int(self.hf_config.get("canvas_length") or 256)


def transformers_config(settings: DiffusionGemmaSettings):
    from transformers import DiffusionGemmaConfig

    d = {k: v for k, v in settings.hf_config.items() if k not in ("model_type", "transformers_version", "architectures")}
    return DiffusionGemmaConfig(**d)


def settings_of_folder(folder, **overrides) -> DiffusionGemmaSettings:
    """The settings of a transformers DiffusionGemma folder (its config.json)."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise SettingError(f"`DiffusionGemmaSettings.pretrained`={str(folder)!r}: cannot read its transformers config "
                           f"({type(err).__name__})") from None
    hf = conf.to_dict()
    return DiffusionGemmaSettings(vocab_size=conf.text_config.vocab_size, pretrained=str(folder), hf_config=hf,
                                  **overrides)


def complete_settings(model: dict) -> dict:
    """The user's model keys (pretrained: a folder or hub id) -> the full config: the folder's
    transformers config and its vocabulary."""
    if model.get("hf_config"):
        return model
    settings = settings_of_folder(base_folder(model.get("pretrained") or ""))
    return {**model, "hf_config": settings.hf_config, "vocab_size": settings.vocab_size}


class DiffusionGemma(nn.Module):
    """backbone(x, sigma=None, *, cache, store_kv, position_offset, attn_mask, self_cond) -> logits
    (B, L, V) (duolm.contracts.Backbone; module docstring)."""

    def __init__(self, config: DiffusionGemmaSettings, network=None):
        super().__init__()
        from transformers import DiffusionGemmaForBlockDiffusion

        self.config = config
        self.network = network if network is not None else DiffusionGemmaForBlockDiffusion._from_config(
            transformers_config(config), attn_implementation=config.attn_implementation)
        # the decoder shares the encoder's weights and the head the embedding: a state dict holds each
        # tensor once (safetensors refuses shared ones) and loading fills the shared names back in
        first, self._tied = {}, {}
        for name, tensor in self.network.state_dict(keep_vars=True).items():
            key = (tensor.data_ptr(), tuple(tensor.shape), str(tensor.dtype))
            if tensor.numel() and key in first:
                self._tied["network." + name] = "network." + first[key]
            else:
                first.setdefault(key, name)
        self._register_state_dict_hook(_drop_tied)
        self._register_load_state_dict_pre_hook(_restore_tied, with_module=True)
        if config.lora is not None:
            self._add_adapters(config.lora)

    def _add_adapters(self, lc: dict) -> None:
        """peft's LoRA injected in place: on the attention projections (as a regex over the text layers)
        and on the experts' weights by default, or on `target_modules`; the decoder's adapters are the
        encoder's (one set, as the weights they adapt are one set); only adapters train."""
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        default = lc["target_modules"] == "all-linear"
        cfg = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"], bias="none",
                         target_modules=ATTENTION if default else lc["target_modules"],
                         target_parameters=EXPERTS if default else None)
        inject_adapter_in_model(cfg, self.network)
        modules = dict(self.network.named_modules())
        for name, module in modules.items():
            if name.startswith("model.decoder.layers.") and isinstance(module, LoraLayer):
                twin = modules.get(encoder_twin(name))
                if isinstance(twin, LoraLayer):
                    module.lora_A, module.lora_B = twin.lora_A, twin.lora_B
        for n, p in self.network.named_parameters():
            p.requires_grad_("lora_" in n)

    def merged(self) -> "DiffusionGemma":
        """The same function without adapters: each adapted weight plus its B A (times alpha / r), once
        for the shared encoder/decoder weight; a plain DiffusionGemma (what its folder saves)."""
        if self.config.lora is None:
            return self
        from dataclasses import replace

        from peft.tuners.lora import LoraLayer

        plain = DiffusionGemma(replace(self.config, lora=None, init="random"))
        deltas = {}
        with torch.no_grad():
            for name, module in self.network.named_modules():
                if isinstance(module, LoraLayer) and not name.startswith("model.decoder."):
                    for param_name, delta in _lora_deltas(name, module):
                        deltas[param_name] = deltas.get(param_name, 0) + delta
            state = {}
            for k, v in self.network.state_dict().items():
                if "lora_" in k:
                    continue
                k2 = k.replace(".base_layer", "")
                state[k2] = v
            for k, delta in deltas.items():
                state[k] = state[k] + delta.to(state[k].dtype)
            for k in list(state):  # the decoder's copy of each shared weight is the merged encoder's
                src = encoder_twin(k)
                if k != src and src in state:
                    state[k] = state[src]
            plain.network.load_state_dict(state, strict=False)
        return plain.train(self.training)

    @classmethod
    def from_folder(cls, folder, dtype=torch.float32, attn_implementation: str = "sdpa",
                    settings: DiffusionGemmaSettings | None = None) -> "DiffusionGemma":
        """transformers' from_pretrained of a DiffusionGemma folder (its weights, tied as saved);
        settings: the network's recorded settings (a duolm folder's), else read from the folder."""
        from transformers import DiffusionGemmaForBlockDiffusion
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a quiet console
        settings = settings or settings_of_folder(folder, attn_implementation=attn_implementation)
        net = DiffusionGemmaForBlockDiffusion.from_pretrained(str(folder), dtype=dtype,
                                                              attn_implementation=settings.attn_implementation)
        return cls(settings, network=net)

    def load_base_weights(self) -> None:
        """A fresh run's starting weights: those of config.pretrained (a folder or hub id)."""
        base = DiffusionGemma.from_folder(base_folder(self.config.pretrained)).network.state_dict()
        own = self.network.state_dict()  # with adapters, a wrapped weight lives at <name>.base_layer.<param>
        state = {k: base[k.replace(".base_layer", "")] for k in own if "lora_" not in k}
        missing = [k for k in own if "lora_" not in k and k.replace(".base_layer", "") not in base]
        if missing:
            raise SettingError(f"`DiffusionGemmaSettings.pretrained`={self.config.pretrained!r}: its weights lack "
                               f"{missing[0]}")
        self.network.load_state_dict(state, strict=False)

    def save_transformers(self, folder) -> Path:
        """transformers' save_pretrained, so DiffusionGemmaForBlockDiffusion.from_pretrained reads it back."""
        self.network.save_pretrained(str(folder))
        return Path(folder)

    # --- the contract ----------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(attention=("bidirectional",), kv_cache=True, encoder_prefix=True, self_conditioning=True,
                            adapters=self.config.lora is not None)

    @property
    def canvas_length(self) -> int:
        return int(self.network.config.canvas_length)

    def set_step(self, step: int | None) -> None:
        """DiffusionGemma's forward does not depend on the training step."""

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, n = set(), 0
        for p in self.parameters():  # tied weights (encoder = decoder) once
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                n += p.numel()
        if exclude_embeddings:
            n -= self.network.get_input_embeddings().weight.numel()
        return n

    def new_cache(self) -> "DiffusionGemmaCache":
        from transformers import DynamicCache

        return DiffusionGemmaCache(DynamicCache(config=self.network.config.get_text_config(decoder=True)))

    def forward(self, x, sigma=None, *, weights=None, class_cond=None, positions=None, position_offset: int = 0,
                attn_mask=None, cache=None, store_kv: bool = True, head=None, self_cond=None):
        if weights is not None or x.is_floating_point():
            raise CapabilityError("DiffusionGemma reads token ids; soft or weighted inputs (Duo's curriculum) are "
                                  "not supported by its embedding")
        if class_cond is not None or positions is not None or head is not None:
            raise CapabilityError("DiffusionGemma takes no labels, explicit positions or fused head: its encoder "
                                  "reads the prefix into the cache and its decoder reads the cache")
        if cache is None:
            raise CapabilityError("DiffusionGemma's decoder reads the prompt from its encoder's cache: pass "
                                  "cache=backbone.new_cache() with at least one token committed (store_kv=True)")
        B, L = x.shape
        pos = (torch.arange(L, device=x.device) + position_offset)[None]
        if store_kv:  # the causal encoder: x's keys and values go into the cache
            if self_cond is not None:
                raise CapabilityError("self-conditioning feeds the decoder (store_kv=False), not the encoder")
            valid = torch.ones(B, L, dtype=torch.bool, device=x.device) if attn_mask is None \
                else attn_mask.to(device=x.device, dtype=torch.bool)
            if valid.shape != (B, L):
                raise CapabilityError(f"DiffusionGemma's encoder pass takes attn_mask (B, L) = {(B, L)} marking "
                                      f"tokens and padding, got {tuple(valid.shape)}")
            every = valid if cache.valid is None else torch.cat([cache.valid, valid], 1)
            out = self.network.model.encoder(input_ids=x, attention_mask=every, cache=cache.inner, position_ids=pos)
            cache.valid = every
            return self._logits(out.last_hidden_state)
        if len(cache) == 0:
            raise CapabilityError("DiffusionGemma's decoder needs at least one token in the cache (a BOS)")
        if attn_mask is not None:
            raise CapabilityError("DiffusionGemma's decoder attends to the whole cache and canvas: no attn_mask")
        keys = torch.cat([cache.valid, torch.ones(B, L, dtype=torch.bool, device=x.device)], 1)
        if self_cond is not None:
            self_cond = self_cond.to(self.network.model.decoder.embed_tokens.weight.dtype)
        out = self.network(decoder_input_ids=x, self_conditioning_logits=self_cond, decoder_attention_mask=keys,
                           cache=cache.inner, decoder_position_ids=pos)
        return out.logits

    def _logits(self, hidden):
        """transformers' head on hidden states: the projection, then the soft cap, in float32."""
        cap = self.network.final_logit_softcapping
        logits = self.network.lm_head(hidden).float()
        return torch.tanh(logits / cap) * cap if cap else logits


def encoder_twin(name: str) -> str:
    """The encoder's name of a decoder layer's module or weight (the two share their weights); other names unchanged."""
    return name.replace("model.decoder.layers.", "model.encoder.language_model.layers.", 1)


def _lora_deltas(name: str, module):
    """(parameter name, B A scaled) of one peft LoRA layer: a Linear's weight, or an experts parameter."""
    from peft.tuners.lora.layer import ParamWrapper

    delta = module.get_delta_weight("default")
    if isinstance(module, ParamWrapper):  # an adapted parameter (the experts'), named by the wrapper
        stem = name
        while stem.endswith(".base_layer"):
            stem = stem[: -len(".base_layer")]
        return [(f"{stem}.{module.parameter_name}", delta)]
    return [(f"{name}.weight", delta)]


def _drop_tied(module, state, prefix, local_metadata):
    for name in module._tied:
        state.pop(prefix + name, None)
    return state


def _restore_tied(module, state, prefix, local_metadata, strict, missing, unexpected, errors):
    for name, source in module._tied.items():
        if prefix + name not in state and prefix + source in state:
            state[prefix + name] = state[prefix + source]


class DiffusionGemmaCache:
    """The encoder's keys and values (a DynamicCache with DiffusionGemma's sliding-window layers) as
    duolm's KVCache, with which cached positions are tokens (``valid`` (B, S); False: padding)."""

    def __init__(self, inner, valid: torch.Tensor | None = None):
        self.inner = inner
        self.valid = valid

    def __len__(self) -> int:
        return 0 if self.valid is None else int(self.valid.shape[1])

    def append(self, k, v, layer: int, *, keep: bool = True):
        raise CapabilityError("DiffusionGemma's cache is written by its encoder (forward with store_kv=True)")

    def crop(self, length: int) -> None:
        drop = len(self) - length
        if drop > 0:
            self.inner.crop(-drop)
            self.valid = self.valid[:, :length]

    def select_rows(self, rows: torch.Tensor) -> None:
        self.inner.batch_select_indices(rows)
        if self.valid is not None:
            self.valid = self.valid[rows]

    def keep_positions(self, index: torch.Tensor) -> "DiffusionGemmaCache":
        raise CapabilityError("DiffusionGemma's sliding-window cache keeps its own positions; Fast-dLLM's "
                              "approximate cache does not apply to it")


def base_folder(spec: str) -> str:
    """A local folder of DiffusionGemma weights: a folder, or a hub id (downloaded where the network
    allows, its chat template included)."""
    return hf_base_folder(spec, what=f"the DiffusionGemma model {spec}",
                          advice="download it where there is a network and pass its folder",
                          files=(*SNAPSHOT_FILES, "*.jinja"))


def is_diffusion_gemma_folder(config: dict) -> bool:
    """Whether a folder's config.json (read) is transformers' DiffusionGemma."""
    return config.get("model_type") == MODEL_TYPE


__all__ = ["DiffusionGemma", "DiffusionGemmaCache", "DiffusionGemmaSettings", "base_folder", "complete_settings",
           "is_diffusion_gemma_folder", "settings_of_folder"]
