"""duolm's own checkpoint format: a directory with model.safetensors and config.json.

config.json records everything needed to sample or evaluate: the algo, the
DiT shape, the noise schedule, the tokenizer and the sequence length. Written
atomically (a temporary directory renamed into place).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from duolm.atomic import atomic_directory
from duolm.data.tokenizers import load_tokenizer
from duolm.methods import build_method
from duolm.models.dit import DiT, DiTConfig
from duolm.schedules import make_schedule

FORMAT = "duolm/1"


@dataclass
class Pretrained:
    backbone: DiT
    method: object
    tokenizer: object
    config: dict


def save_pretrained(directory, backbone: DiT, *, algo: dict, noise: dict, tokenizer, length: int,
                    extra: dict | None = None, dtype: torch.dtype = torch.float32):
    """Write the model directory atomically; dtype=float16 halves the file (weights are read
    back into float32 models)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "algo": algo, "model": backbone.config.to_dict(), "noise": noise,
              "tokenizer": tokenizer.to_dict(), "length": length, **(extra or {})}
    state = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
             for k, v in backbone.state_dict().items()}
    with atomic_directory(directory) as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def method_from_config(algo: dict, noise: dict, vocab_size: int):
    return build_method(algo["name"], vocab_size, schedule=make_schedule(noise.get("type", "log-linear"),
                                                                         noise.get("eps", 1e-3)),
                        num_steps=algo.get("T"), time_conditioning=algo.get("time_conditioning"))


BUILTIN_PREFIX = "builtin:"


def builtin_models() -> dict[str, Path]:
    """Small models that ship inside the package (src/duolm/pretrained/<name>)."""
    root = Path(__file__).parent / "pretrained"
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").exists()} if root.is_dir() else {}


def resolve_builtin(path: str) -> str:
    """'builtin:<name>' -> the shipped directory; any other path unchanged."""
    if not str(path).startswith(BUILTIN_PREFIX):
        return str(path)
    name = str(path)[len(BUILTIN_PREFIX):]
    models = builtin_models()
    if name not in models:
        raise FileNotFoundError(f"eval.checkpoint_path: no built-in model {name!r}; the built-in models are "
                                f"{sorted(models)}")
    return str(models[name])


def from_pretrained(directory, map_location="cpu") -> Pretrained:
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{directory} is not a duolm checkpoint: it needs config.json and model.safetensors")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err.msg})") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    tokenizer = load_tokenizer(config["tokenizer"])
    method = method_from_config(config["algo"], config["noise"], tokenizer.vocab_size)
    dit_cfg = DiTConfig(**config["model"])
    if dit_cfg.vocab_size != method.model_vocab_size:
        raise ValueError(f"{directory}: the network has {dit_cfg.vocab_size} outputs but algo "
                         f"{config['algo']['name']} with this tokenizer needs {method.model_vocab_size}")
    backbone = DiT(dit_cfg)
    try:
        state = load_file(weights, device=str(map_location))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise ValueError(f"{weights}: cannot read the weights ({err})") from None
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return Pretrained(backbone.eval(), method, tokenizer, config)


def load_run_checkpoint(path, use_ema: bool = True, map_location="cpu") -> Pretrained:
    """A Lightning checkpoint written by `duolm train` (EMA weights by default).

    Loaded with weights_only=True: no pickled code runs.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, wrong format, ...
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if "duolm" not in ckpt:
        raise ValueError(f"{path}: not a duolm training checkpoint (no 'duolm' entry); the papers' "
                         f"checkpoints load with duolm.reference_checkpoints.load_reference")
    return pretrained_from_run(ckpt, use_ema)


def pretrained_from_run(ckpt: dict, use_ema: bool = True) -> Pretrained:
    """The model in an already-loaded `duolm train` checkpoint."""
    config = ckpt["duolm"]
    tokenizer = load_tokenizer(config["tokenizer"])
    method = method_from_config(config["algo"], config["noise"], tokenizer.vocab_size)
    backbone = DiT(DiTConfig(**config["model"]))
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    backbone.load_state_dict(state, strict=True)
    if use_ema and "ema" in ckpt:
        with torch.no_grad():
            for n, p in backbone.named_parameters():
                p.copy_(ckpt["ema"]["shadow"][n])
    return Pretrained(backbone.eval(), method, tokenizer, config)
