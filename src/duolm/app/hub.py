"""Sharing models on the Hugging Face Hub: a model card, and `duolm push`.

    duolm push eval.checkpoint_path=outputs/run/model hub.repo=me/duo-owt

Any checkpoint the loader takes is written in duolm's format into a staging folder (the user's
folder is never modified) with a generated model card (README.md): algo, data, size, training
steps and time, the measured validation NELBO, the sampler settings of its samples and how to
load it; then the folder is uploaded. Loading by hub id is `duolm.load("me/duo-owt")` (a snapshot
download, then the normal loader: duolm.checkpoints.loading.load_pretrained).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from duolm.checkpoints.duolm_format import METRICS_FILE, training_of
from duolm.checkpoints.loading import (
    load_pretrained,
    looks_like_hub_id,
    read_config_json,
    resolve_builtin,
    save_pretrained,
)
from duolm.models.backbones import backbone_row

# bases whose hub id and licence are known offline (model.pretrained's short names)
KNOWN_BASES = {"smollm2": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
               "google/diffusiongemma-26B-A4B-it": {"id": "google/diffusiongemma-26B-A4B-it", "license": "gemma"}}


def base_model_of(model: dict) -> dict | None:
    """The pretrained model a network started from (its row's base_of: model=hf, DiffusionGemma): its hub id
    (or folder) and, where known, its licence."""
    row = backbone_row(model.get("type", "dit"))
    p = row.base_of(model) if row.base_of is not None else None
    if not p:
        return None
    return KNOWN_BASES.get(str(p), {"id": str(p)})


def model_card(config: dict, metrics: dict | None, *, repo_id: str, parameters: int) -> str:
    """The README.md of a duolm model repository."""
    metrics = metrics or {}
    algo = config["algo"]["name"]
    model = config["model"]
    tok = config["tokenizer"]
    shape = backbone_row(model.get("type", "dit")).describe(model)
    base = base_model_of(model)
    front = [f"base_model: {base['id']}"] + ([f"license: {base['license']}"] if base.get("license") else []) \
        if base else []
    lines = ["---", "library_name: duolm", "tags: [discrete-diffusion, duolm, " + algo + "]", *front, "---", "",
             f"# {repo_id}", "",
             f"A {algo} model trained with duolm (discrete diffusion language models: Duo, MDLM, SEDD, D3PM, AR).",
             "",
             "| | |", "|---|---|",
             f"| algo | {algo} (T = {config['algo'].get('T', 0)}, time conditioning "
             f"{config['algo'].get('time_conditioning')}) |",
             f"| network | {shape}, {parameters / 1e6:.2f}M parameters |",
             f"| tokenizer | {tok.get('type')}{' ' + tok['name'] if tok.get('name') else ''}, "
             f"vocabulary {model['vocab_size']} |",
             f"| sequence length | {config['length']} |",
             f"| noise schedule | {config['noise'].get('type')} (eps {config['noise'].get('eps')}) |",
             f"| data | {config.get('data', metrics.get('data', 'not recorded'))} |"]
    train = metrics.get("train", {})
    steps = train.get("steps", config.get("steps"))
    lines.append(f"| training steps | {steps if steps is not None else 'not recorded'} |")
    if base:
        lora = model.get("lora")
        lines.append(f"| base model | {base['id']}, adapted to {algo} "
                     f"({'LoRA r = ' + str(lora['r']) + ' adapters: loading needs the base' if lora else 'all weights'}) |")
        lines.append(f"| licence | {base.get('license') or 'the base model' + chr(39) + 's (see its card)'} |")
    if train.get("train_seconds") is not None:
        lines.append(f"| training time | {train['train_seconds'] / 60:.1f} min |")
    val = metrics.get("validation")
    if val:
        unit = metrics.get("unit", "token")
        lines.append(f"| validation NELBO | {val['nll']:.4f} ± {val.get('nll_se', float('nan')):.4f} nats/{unit} "
                     f"({val['nll'] / math.log(2):.4f} bits/{unit}; {val.get('time_samples', 1)} draws of t) |")
    else:
        lines.append("| validation NELBO | not measured |")
    sampler = metrics.get("sampler")
    if sampler:
        lines.append(f"| samples drawn with | {sampler.get('predictor')}, {sampler.get('steps')} steps, last step "
                     f"{sampler.get('noise_removal')} |")
    lines += ["", "## Use it", "", "```python", "import duolm", "",
              f'm = duolm.load("{repo_id}")', "print(m.generate(n=4, steps=64).texts)", "```", "",
              "or from the command line:", "", "```bash",
              f"duolm sample eval.checkpoint_path={repo_id} sampling.steps=64", "```", ""]
    if metrics.get("samples"):
        lines += ["## Samples", ""] + [f"> {s[:300]}" for s in metrics["samples"][:3]] + [""]
    return "\n".join(lines)


def stage(path, repo_id: str, directory: Path) -> Path:
    """Write the model at `path` (anything duolm.checkpoints.loading.load_pretrained takes) in duolm's format
    into `directory` with its model card; the source is only read."""
    pre = load_pretrained(path)
    src = Path(resolve_builtin(str(path)))
    extra = {k: v for k, v in pre.config.items()
             if k not in ("format", "algo", "model", "noise", "tokenizer", "length", "training")}
    out = save_pretrained(directory / "model", pre.backbone.cpu(), algo=pre.config["algo"], noise=pre.config["noise"],
                          tokenizer=pre.tokenizer, length=pre.config["length"], training=training_of(pre.method),
                          extra=extra)
    metrics = None
    if src.is_dir() and (src / METRICS_FILE).is_file():
        metrics = json.loads((src / METRICS_FILE).read_text())
        shutil.copy(src / METRICS_FILE, out / METRICS_FILE)
    card = model_card(read_config_json(out), metrics, repo_id=repo_id, parameters=pre.backbone.num_parameters())
    if src.is_dir() and (src / "README.md").is_file():  # the folder's own notes (the built-in models have them)
        card += "\n## Notes from the model's folder\n\n" + (src / "README.md").read_text()
    (out / "README.md").write_text(card)
    return out


def _upload(folder: Path, repo_id: str, *, private: bool, message: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    return str(getattr(info, "commit_url", f"https://huggingface.co/{repo_id}"))


def push(path, repo_id: str, *, private: bool = False, message: str = "Upload a duolm model", upload=None) -> str:
    """Stage the model at `path` with its card and upload it to `repo_id`; returns the commit's URL."""
    if not isinstance(repo_id, str) or not looks_like_hub_id(repo_id):
        raise ValueError(f"hub.repo must be a Hugging Face repository id such as me/duo-owt, got {repo_id!r}")
    upload = upload or _upload
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(path, repo_id, Path(tmp))
        try:
            return upload(folder, repo_id, private=private, message=message)
        except Exception as err:  # noqa: BLE001 - offline, no token, no permission
            raise ValueError(f"could not push to the Hugging Face Hub repository {repo_id} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'}); check the network and "
                             f"`huggingface-cli login`") from None
