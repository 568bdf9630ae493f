"""duolm's model format: a folder with model.safetensors and config.json, written atomically.

config.json records everything needed to sample or evaluate: the algo, the network's shape, the
noise schedule, the tokenizer, the sequence length and how the method was trained (its
training-time draw floor sampling_eps, the loss precision and the loss path), so a loaded model
behaves as it was trained. ``duolm.checkpoints.loading.load_pretrained`` is the one door that reads every format;
this file holds duolm's own, which the papers' readers (duolm.checkpoints.papers) build on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from duolm.core.conditioning import num_classes_of
from duolm.core.methods import build_method
from duolm.core.schedules import make_schedule
from duolm.data.tokenizers import HFTokenizer, load_tokenizer
from duolm.io.atomic import atomic_directory
from duolm.models.backbones import backbone_config, backbone_row, build_backbone

FORMAT = "duolm/1"
# duolm's config beside a network saved in its own library's format (whose config.json that is)
DUOLM_CONFIG = "duolm.json"
METRICS_FILE = "metrics.json"  # written next to a trained model by `duolm train`: validation, training, sampler
LOSS_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# what a model trained before config.json recorded "training" was trained with
TRAINING_DEFAULTS = {"sampling_eps": 1e-3, "loss_precision": "float32", "fused_loss": True}


def training_of(method) -> dict:
    """The training settings a Method carries, as config.json records them."""
    precision = next(k for k, v in LOSS_DTYPES.items() if v == method.loss_dtype)
    return {"sampling_eps": float(method.sampling_eps), "loss_precision": precision, "fused_loss": bool(method.fused)}


@dataclass
class Pretrained:
    backbone: torch.nn.Module  # a DiT or a UNet (duolm.models.backbones)
    method: object
    tokenizer: object
    config: dict

    @property
    def num_classes(self) -> int:
        """> 0 for a class-conditional model (label num_classes is the null label)."""
        return num_classes_of(self.backbone)


def save_pretrained(directory, backbone: torch.nn.Module, *, algo: dict, noise: dict, tokenizer, length: int,
                    training: dict | None = None, extra: dict | None = None, dtype: torch.dtype = torch.float32):
    """Write the model directory atomically; dtype=float16 halves the file (weights are read
    back into float32 models). training: how the method was trained (training_of(method)), so a
    loaded model samples and evaluates as it was trained."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    row = backbone_row(backbone.config.type)
    if row.native_save is not None and backbone.capabilities.adapters:  # its own format holds plain weights
        backbone = backbone.merged()
    config = {"format": FORMAT, "algo": algo, "model": backbone.config.to_dict(), "noise": noise,
              "tokenizer": tokenizer.to_dict(), "length": length, "training": training_settings(training),
              **(extra or {})}
    with atomic_directory(directory) as tmp:
        if row.native_save is not None:  # transformers' own folder (config.json, weights), duolm's beside it
            row.native_save(backbone, tmp)
            (tmp / DUOLM_CONFIG).write_text(json.dumps(config, indent=2))
        else:
            state = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
                     for k, v in backbone.state_dict().items()}
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if bundles_tokenizer(tokenizer):  # a folder or hub tokenizer travels with the model
            tokenizer.tok.save_pretrained(tmp / TOKENIZER_DIR)
    return directory


TOKENIZER_DIR = "tokenizer"


def bundles_tokenizer(tokenizer) -> bool:
    """Whether a model folder keeps its own copy of the tokenizer: a Hugging Face tokenizer other
    than the offline gpt2 (a local folder, a hub id, smollm2), so the model loads where that
    source is not."""
    spec = tokenizer.to_dict()
    return spec.get("type") == "hf" and spec.get("name") != "gpt2" and \
        hasattr(getattr(tokenizer, "tok", None), "save_pretrained")


def tokenizer_of(directory: Path, spec: dict):
    """A model folder's tokenizer: its bundled copy when it has one, else the recorded spec."""
    bundled = Path(directory) / TOKENIZER_DIR
    if spec.get("type") == "hf" and bundled.is_dir():
        from transformers import AutoTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(bundled), spec["name"])
    return load_tokenizer(spec)


def training_settings(training: dict | None) -> dict:
    """How a model was trained, as a config.json records it ("training": sampling_eps,
    loss_precision, fused_loss), with today's defaults for folders written before it was recorded."""
    t = {**TRAINING_DEFAULTS, **(training or {})}
    if t["loss_precision"] not in LOSS_DTYPES:
        raise ValueError(f"config.json: training.loss_precision must be one of {sorted(LOSS_DTYPES)}, "
                         f"got {t['loss_precision']!r}")
    return t


def method_from_config(algo: dict, noise: dict, vocab_size: int, training: dict | None = None):
    """The Method a saved config describes, as it was trained (training_settings)."""
    t = training_settings(training)
    return build_method(algo["name"], vocab_size, schedule=make_schedule(noise.get("type", "log-linear"),
                                                                         noise.get("eps", 1e-3)),
                        num_steps=algo.get("T"), time_conditioning=algo.get("time_conditioning"),
                        sampling_eps=float(t["sampling_eps"]), loss_dtype=LOSS_DTYPES[t["loss_precision"]],
                        fused=bool(t["fused_loss"]), block_size=algo.get("block_size"))


def strip_prefix(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix`, with the prefix removed (a Lightning module's
    `backbone.` weights as the bare network's)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_config_json(directory: Path) -> dict:
    """A model folder's duolm config: duolm.json beside a network in its own format, else config.json."""
    cfg_path = Path(directory) / DUOLM_CONFIG
    if not cfg_path.exists():
        cfg_path = Path(directory) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{directory}: no config.json")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err.msg})") from None


def from_pretrained(directory, map_location="cpu", config: dict | None = None) -> Pretrained:
    """A duolm model directory (config: its config.json, when already read)."""
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    if (directory / DUOLM_CONFIG).exists():
        cfg_path = directory / DUOLM_CONFIG
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{directory} is not a duolm checkpoint: it needs config.json and model.safetensors")
    config = config if config is not None else read_config_json(directory)
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("algo", "model", "noise", "tokenizer", "length") if k not in config]
    if missing:
        raise ValueError(f"{cfg_path}: no {', '.join(repr(k) for k in missing)} entry (a duolm config.json records "
                         f"algo, model, noise, tokenizer and length)")
    tokenizer = tokenizer_of(directory, config["tokenizer"])
    method = method_from_config(config["algo"], config["noise"], tokenizer.vocab_size, config.get("training"))
    net_cfg = backbone_config(config["model"])
    if net_cfg.vocab_size != method.model_vocab_size:
        raise ValueError(f"{directory}: the network has {net_cfg.vocab_size} outputs but algo "
                         f"{config['algo']['name']} with this tokenizer needs {method.model_vocab_size}")
    row = backbone_row(net_cfg.type)
    if row.native_load is not None and cfg_path.name == DUOLM_CONFIG:  # the network in its own format
        return Pretrained(row.native_load(directory, net_cfg).eval(), method, tokenizer, config)
    backbone = build_backbone(net_cfg)
    try:
        state = load_file(weights, device=str(map_location))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise ValueError(f"{weights}: cannot read the weights ({err})") from None
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that config.json does not describe
        bad = [line.strip() for line in str(err).splitlines() if "size mismatch" in line][:1]
        raise ValueError(f"{weights}: the weights do not have the shapes config.json describes "
                         f"({bad[0] if bad else 'size mismatch'})") from None
    if missing or unexpected:
        raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return Pretrained(backbone.eval(), method, tokenizer, config)


def pretrained_from_run(ckpt: dict, use_ema: bool = True) -> Pretrained:
    """The model in an already-loaded `duolm train` checkpoint."""
    config = ckpt["duolm"]
    tokenizer = load_tokenizer(config["tokenizer"])
    method = method_from_config(config["algo"], config["noise"], tokenizer.vocab_size, config.get("training"))
    backbone = build_backbone(config["model"])
    backbone.load_state_dict(strip_prefix(ckpt["state_dict"], "backbone."), strict=True)
    if use_ema and "ema" in ckpt:
        with torch.no_grad():
            for n, p in backbone.named_parameters():
                if n in ckpt["ema"]["shadow"]:  # frozen parameters (a LoRA model's base) have no average
                    p.copy_(ckpt["ema"]["shadow"][n])
    return Pretrained(backbone.eval(), method, tokenizer, config)
