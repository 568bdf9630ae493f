"""The backbone table: name -> Backbone (its network, its config, and what it accepts).

    net = build_backbone({"type": "unet", "vocab_size": 256, ...})   # or DiT's dict (type "dit")

A network's config records its `type`, so a saved model rebuilds itself; configs written before
the table existed have no `type`; they are DiTs. Adding a backbone is one file with its network and
config dataclass, and one row here: the row says which data it reads, whether its config takes
`causal` (so it can serve AR), whether it reads the curriculum's relaxed inputs, and how a model
card names its shape. The application asks the row; it never tests a backbone's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from duolm.models.dit import DiT, DiTConfig
from duolm.models.hf_lm import HFLM, HFConfig, base_config
from duolm.models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class Backbone:
    network: type
    config: type
    data: tuple[str, ...]        # what it reads: 'text' token sequences, 'image' pixel tokens (any sequence for a DiT)
    image_shaped: bool           # its config takes the image's shape (channels, image_size) from the data
    causal_option: bool          # its config has `causal` (attention that can serve AR)
    relaxed_inputs: bool         # reads soft / weighted inputs (Duo's curriculum), not only token ids
    describe: Callable[[dict], str]  # a config dict -> its shape in words (model cards)
    complete: Callable[[dict], dict] | None = None     # the user's model keys -> the full config (a base's architecture)
    initialise: Callable[[object], None] | None = None  # a fresh run's network -> its starting weights (pretrained)


BACKBONES: dict[str, Backbone] = {
    "dit": Backbone(DiT, DiTConfig, data=("text", "image"), image_shaped=False, causal_option=True, relaxed_inputs=True,
                    describe=lambda m: f"DiT, {m['n_blocks']} blocks x {m['hidden_size']}"),
    "unet": Backbone(UNet, UNetConfig, data=("image",), image_shaped=True, causal_option=False, relaxed_inputs=False,
                     describe=lambda m: "unet"),
    "hf": Backbone(HFLM, HFConfig, data=("text",), image_shaped=False, causal_option=True, relaxed_inputs=True,
                   describe=lambda m: f"{m['pretrained']} ({m['hf_config'].get('model_type')}, pretrained)",
                   complete=lambda m: {**m, "hf_config": m.get("hf_config") or base_config(m.get("pretrained", "smollm2"))},
                   initialise=lambda net: net.load_base_weights() if net.config.init == "pretrained" else None),
}


def backbone_row(kind: str) -> Backbone:
    if kind not in BACKBONES:
        raise ValueError(f"model.type must be one of {sorted(BACKBONES)}, got {kind!r}")
    return BACKBONES[kind]


def backbone_config(model: dict):
    """The typed config (DiTConfig or UNetConfig) of a config dict."""
    kind = model.get("type", "dit")
    cls = backbone_row(kind).config
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(model) - fields)
    if unknown:
        raise ValueError(f"model.{unknown[0]} is not a setting of the {kind} backbone (its settings: "
                         f"{', '.join(sorted(fields - {'type'}))})")
    return cls(**{**model, "type": kind})


def build_backbone(config):
    """A fresh network from a typed config or its dict."""
    if isinstance(config, dict):
        config = backbone_config(config)
    return BACKBONES[config.type].network(config)
