"""Checkpoints: the one door to load any model, and duolm's own format.

    pre = duolm.checkpoints.loading.load_pretrained("builtin:duo-bigtxt-dcd")   # -> Pretrained(backbone, method, tokenizer, config)

``load_pretrained`` takes a built-in name (``builtin:<name>``), a duolm model directory, a `duolm train`
run checkpoint (``.ckpt``, EMA weights by default), the papers' Lightning checkpoints and their
Hugging Face layouts (duolm.checkpoints.papers), or a Hugging Face Hub id where the network
allows; a transformers DiffusionGemma folder (duolm.checkpoints.diffusion_gemma). duolm's own format (a folder with model.safetensors and config.json) is duolm.checkpoints.duolm_format.
"""
from __future__ import annotations

from pathlib import Path

from duolm.checkpoints import papers
from duolm.checkpoints.diffusion_gemma import from_diffusion_gemma_folder
from duolm.checkpoints.duolm_format import (
    FORMAT,
    Pretrained,
    from_pretrained,
    method_from_config,
    pretrained_from_run,
    read_config_json,
    save_pretrained,
    strip_prefix,
    training_of,
)
from duolm.io.hub_access import HubUnreachable, from_hub
from duolm.models.diffusion_gemma import is_diffusion_gemma_folder

__all__ = ["BUILTIN_PREFIX", "FORMAT", "Pretrained", "builtin_models", "from_pretrained", "load_pretrained",
           "looks_like_hub_id", "method_from_config", "pretrained_from_run", "read_config_json", "resolve_builtin",
           "save_pretrained", "strip_prefix", "training_of"]

BUILTIN_PREFIX = "builtin:"


def builtin_models() -> dict[str, Path]:
    """Small models that ship inside the package (src/duolm/pretrained/<name>)."""
    root = Path(__file__).parents[1] / "pretrained"
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


def load_pretrained(path_or_name, *, algo: str | None = None, use_ema: bool = True, tokenizer="gpt2", n_heads=None,
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
    if path.is_dir():
        config = read_config_json(path)
        if config.get("format") == FORMAT:
            return from_pretrained(path, config=config)
        if is_diffusion_gemma_folder(config):
            return from_diffusion_gemma_folder(path)
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
    from huggingface_hub import snapshot_download

    try:
        with from_hub(f"the model {repo_id}", "download it where there is a network and pass its folder"):
            return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except HubUnreachable:
        raise
    except Exception as err:  # noqa: BLE001 - unknown repo, gated, ...
        raise FileNotFoundError(f"{repo_id} is neither a local path nor a reachable Hugging Face Hub model "
                                f"({type(err).__name__}); download it elsewhere and pass the folder") from None


