"""The backbone table: name -> BackboneRow (its network, its config, and what it can do).

    net = build_backbone({"type": "unet", "vocab_size": 256, ...})   # or DiT's dict (type "dit")

A network's config records its `type`, so a saved model rebuilds itself; configs written before
the table existed have no `type`; they are DiTs. Adding a backbone is one file with its network and
config dataclass, and one row here: the row says which data it reads, whether its config takes
`causal` (so it can serve AR), the most its network can do (duolm.contracts.Capabilities: attention
patterns, a KV cache, the fused head, labels, soft inputs, the noise level, an encoder prefix, the
training step), and how a model card names its shape. Every network is built through
`build_backbone`, which checks that it implements duolm.contracts.Backbone and claims nothing beyond
its row. The application and the samplers ask the row or the network's `capabilities`; nothing tests
a backbone's name or probes it with hasattr.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from duolm.contracts import Backbone, Capabilities
from duolm.errors import SettingError
from duolm.models.diffusion_gemma import DiffusionGemma, DiffusionGemmaSettings, complete_settings
from duolm.models.dit import DiT, DiTConfig
from duolm.models.hf_lm import HFLM, HFConfig, base_config
from duolm.models.unet import UNet, UNetConfig


@dataclass(frozen=True)
class BackboneRow:
    network: type
    config: type
    data: tuple[str, ...]        # what it reads: 'text' token sequences, 'image' pixel tokens (any sequence for a DiT)
    image_shaped: bool           # its config takes the image's shape (channels, image_size) from the data
    causal_option: bool          # its config has `causal` (attention that can serve AR)
    capabilities: Capabilities   # the most its network can do; a built one narrows it to its config
    describe: Callable[[dict], str]  # a config dict -> its shape in words (model cards)
    complete: Callable[[dict], dict] | None = None     # the user's model keys -> the full config (a base's architecture)
    initialise: Callable[[object], None] | None = None  # a fresh run's network -> its starting weights (pretrained)
    # a network with a format of its own (transformers'): save(net, folder) writes config.json and its weights
    # there, load(folder, config) reads them back; duolm's config then goes to duolm.json beside them
    native_save: Callable[[object, object], None] | None = None
    native_load: Callable[[object, object], object] | None = None
    base_of: Callable[[dict], str | None] | None = None  # where a pretrained network's weights came from

    @property
    def relaxed_inputs(self) -> bool:
        """Reads soft / weighted inputs (Duo's curriculum), not only token ids."""
        return self.capabilities.soft_inputs


# what a transformer over token sequences can do (DiT, model=hf): every attention pattern (causal when
# built for AR), a cache, the fused head, soft inputs; the rest depends on its config
TRANSFORMER = Capabilities(attention=("bidirectional", "causal", "block_causal"), kv_cache=True, head=True,
                           soft_inputs=True, time_conditioning=True)


BACKBONES: dict[str, BackboneRow] = {
    "dit": BackboneRow(DiT, DiTConfig, data=("text", "image"), image_shaped=False, causal_option=True,
                       capabilities=TRANSFORMER.changed(class_conditioning=True, ragged_rows=True),
                       describe=lambda m: f"DiT, {m['n_blocks']} blocks x {m['hidden_size']}"),
    "unet": BackboneRow(UNet, UNetConfig, data=("image",), image_shaped=True, causal_option=False,
                        capabilities=Capabilities(attention=("bidirectional",), class_conditioning=True,
                                                  time_conditioning=True),
                        describe=lambda m: "unet"),
    "hf": BackboneRow(HFLM, HFConfig, data=("text",), image_shaped=False, causal_option=True,
                      capabilities=TRANSFORMER.changed(training_step=True, adapters=True, ragged_rows=True),
                   describe=lambda m: f"{m['pretrained']} ({m['hf_config'].get('model_type')}, pretrained)",
                   complete=lambda m: {**m, "hf_config": m.get("hf_config") or base_config(m.get("pretrained", "smollm2"))},
                   initialise=lambda net: net.load_base_weights() if net.config.init == "pretrained" else None,
                   base_of=lambda m: m.get("pretrained")),
    # transformers' DiffusionGemma: an encoder reads the prompt into the cache, the decoder denoises canvases
    "diffusion_gemma": BackboneRow(
        DiffusionGemma, DiffusionGemmaSettings, data=("text",), image_shaped=False, causal_option=False,
        capabilities=Capabilities(attention=("bidirectional",), kv_cache=True, encoder_prefix=True,
                                  self_conditioning=True, adapters=True),
        describe=lambda m: f"DiffusionGemma {m['pretrained'] or '(random)'}, canvas {m['hf_config'].get('canvas_length')}",
        complete=complete_settings,
        initialise=lambda net: net.load_base_weights() if net.config.init == "pretrained" and net.config.pretrained
        else None,
        native_save=lambda net, folder: net.save_transformers(folder),
        native_load=lambda folder, config: DiffusionGemma.from_folder(folder, settings=config),
        base_of=lambda m: m.get("pretrained") or None),
}


def backbone_row(kind: str) -> BackboneRow:
    if kind not in BACKBONES:
        raise SettingError(f"`build_backbone.type` must be one of {sorted(BACKBONES)}, got {kind!r}")
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
    """A fresh network from a typed config or its dict, checked against the contract and its row."""
    if isinstance(config, dict):
        config = backbone_config(config)
    return checked(BACKBONES[config.type].network(config), config.type)


def checked(net, kind: str):
    """`net` once it implements duolm.contracts.Backbone and claims nothing beyond its row's capabilities
    (a TypeError otherwise: a programming error in the network, not a user's)."""
    if not isinstance(net, Backbone):
        raise TypeError(f"the {kind} network does not implement duolm.contracts.Backbone")
    beyond = net.capabilities.within(BACKBONES[kind].capabilities)
    if beyond:
        raise TypeError(f"the {kind} network claims {', '.join(beyond)} beyond its BACKBONES row")
    return net
