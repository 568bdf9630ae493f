"""The backbone table: a network's config records its `type`, so a saved model rebuilds itself.

    net = build_backbone({"type": "unet", "vocab_size": 256, ...})   # or DiT's dict (type "dit")

Configs written before the table existed have no `type`; they are DiTs.
"""
from __future__ import annotations

from duolm.models.dit import DiT, DiTConfig
from duolm.models.unet import UNet, UNetConfig

BACKBONES = {"dit": (DiT, DiTConfig), "unet": (UNet, UNetConfig)}


def backbone_config(model: dict):
    """The typed config (DiTConfig or UNetConfig) of a config dict."""
    kind = model.get("type", "dit")
    if kind not in BACKBONES:
        raise ValueError(f"model.type must be one of {sorted(BACKBONES)}, got {kind!r}")
    cls = BACKBONES[kind][1]
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
    return BACKBONES[config.type][0](config)
