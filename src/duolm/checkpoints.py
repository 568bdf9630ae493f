"""Checkpoints: the one door to load any model, and duolm's own format.

    pre = duolm.checkpoints.load("builtin:duo-bigtxt-dcd")   # -> Pretrained(backbone, method, tokenizer, config)

``load`` takes a built-in name (``builtin:<name>``), a duolm model directory, a `duolm train`
run checkpoint (``.ckpt``, EMA weights by default), the papers' Lightning checkpoints and their
Hugging Face layouts (duolm.papers_checkpoints), or a Hugging Face Hub id where the network
allows. duolm's format is a directory with model.safetensors and config.json, which records
everything needed to sample or evaluate: the algo, the DiT shape, the noise schedule, the
tokenizer and the sequence length; it is written atomically.
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
from duolm.models.backbones import backbone_config, build_backbone
from duolm.schedules import make_schedule

FORMAT = "duolm/1"


@dataclass
class Pretrained:
    backbone: torch.nn.Module  # a DiT or a UNet (duolm.models.backbones)
    method: object
    tokenizer: object
    config: dict

    @property
    def num_classes(self) -> int:
        """> 0 for a class-conditional model (label num_classes is the null label)."""
        return getattr(self.backbone.config, "num_classes", 0)


def save_pretrained(directory, backbone: torch.nn.Module, *, algo: dict, noise: dict, tokenizer, length: int,
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


def strip_prefix(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix`, with the prefix removed (a Lightning module's
    `backbone.` weights as the bare network's)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_config_json(directory: Path) -> dict:
    cfg_path = Path(directory) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{directory}: no config.json")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON ({err.msg})") from None


def load(path_or_name, *, algo: str | None = None, use_ema: bool = True, tokenizer="gpt2", n_heads=None,
         length: int | None = None) -> Pretrained:
    """Any supported checkpoint (see the module docstring) as a Pretrained model on the CPU.

    The hints (algo, tokenizer, n_heads, length) fill in what a papers' file does not say; algo
    is also checked against what a file does say.
    """
    path = Path(resolve_builtin(str(path_or_name)))
    if not path.exists() and looks_like_hub_id(str(path_or_name)):
        path = _download(str(path_or_name))
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    from duolm import papers_checkpoints as papers

    if path.is_dir():
        config = read_config_json(path)
        if config.get("format") == FORMAT:
            return from_pretrained(path, config=config)
        return papers.from_hub_directory(path, config, algo=algo, tokenizer=tokenizer, n_heads=n_heads, length=length)
    ckpt = papers.load_lightning_checkpoint(path)
    if "duolm" in ckpt:  # a `duolm train` checkpoint
        return pretrained_from_run(ckpt, use_ema=use_ema)
    return papers.from_lightning(ckpt, str(path), algo=algo, use_ema=use_ema, tokenizer=tokenizer, n_heads=n_heads,
                                 length=length)


def looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    """A Hugging Face Hub id (e.g. s-sahoo/duo) to a local snapshot, where the network allows."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated, ...
        raise FileNotFoundError(f"{repo_id} is neither a local path nor a reachable Hugging Face Hub model "
                                f"({type(err).__name__}); download it elsewhere and pass the folder") from None


def from_pretrained(directory, map_location="cpu", config: dict | None = None) -> Pretrained:
    """A duolm model directory (config: its config.json, when already read)."""
    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{directory} is not a duolm checkpoint: it needs config.json and model.safetensors")
    config = config if config is not None else read_config_json(directory)
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("algo", "model", "noise", "tokenizer", "length") if k not in config]
    if missing:
        raise ValueError(f"{cfg_path}: no {', '.join(repr(k) for k in missing)} entry (a duolm config.json records "
                         f"algo, model, noise, tokenizer and length)")
    tokenizer = load_tokenizer(config["tokenizer"])
    method = method_from_config(config["algo"], config["noise"], tokenizer.vocab_size)
    net_cfg = backbone_config(config["model"])
    if net_cfg.vocab_size != method.model_vocab_size:
        raise ValueError(f"{directory}: the network has {net_cfg.vocab_size} outputs but algo "
                         f"{config['algo']['name']} with this tokenizer needs {method.model_vocab_size}")
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
    method = method_from_config(config["algo"], config["noise"], tokenizer.vocab_size)
    backbone = build_backbone(config["model"])
    backbone.load_state_dict(strip_prefix(ckpt["state_dict"], "backbone."), strict=True)
    if use_ema and "ema" in ckpt:
        with torch.no_grad():
            for n, p in backbone.named_parameters():
                p.copy_(ckpt["ema"]["shadow"][n])
    return Pretrained(backbone.eval(), method, tokenizer, config)
