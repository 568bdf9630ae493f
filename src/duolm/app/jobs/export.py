"""duolm convert and duolm push: a model written elsewhere, the source only read."""
from __future__ import annotations

import torch

from duolm.app.hub import push
from duolm.app.loading import load_for_eval
from duolm.checkpoints.duolm_format import training_of
from duolm.checkpoints.loading import save_pretrained

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cmd_convert(cfg, parts):
    """eval.checkpoint_path (any format the loader reads) as a duolm model folder at convert.output."""
    if not cfg.get("convert") or not cfg.convert.get("output"):
        raise ValueError("duolm convert needs convert.output=<directory> (and eval.checkpoint_path=<input>)")
    dtype = cfg.convert.get("dtype", "float32")
    if dtype not in DTYPES:  # before the model is read
        raise ValueError(f"convert.dtype must be one of {list(DTYPES)}, got {cfg.convert.dtype!r}")
    pre, _ = load_for_eval(cfg)
    backbone = pre.backbone.cpu()
    if cfg.convert.get("merge_lora"):
        if not backbone.capabilities.adapters:
            raise ValueError(f"convert.merge_lora: {cfg.eval.checkpoint_path} has no LoRA adapters to merge")
        backbone = backbone.merged()
    out = save_pretrained(cfg.convert.output, backbone, algo=pre.config["algo"], noise=pre.config["noise"],
                          tokenizer=pre.tokenizer, length=pre.config["length"], training=training_of(pre.method),
                          extra={"converted_from": str(cfg.eval.checkpoint_path)}, dtype=DTYPES[dtype])
    print(f"wrote {out} ({pre.config['algo']['name']}, {backbone.num_parameters() / 1e6:.2f}M parameters, "
          f"vocabulary {backbone.config.vocab_size})")
    return 0


def cmd_push(cfg, parts):
    """Upload eval.checkpoint_path to hub.repo in duolm's format, with a generated model card."""
    if not cfg.eval.checkpoint_path:
        raise ValueError("duolm push needs eval.checkpoint_path=<a model> and hub.repo=<owner/name>")
    if not cfg.hub.repo:
        raise ValueError("duolm push needs hub.repo=<owner/name>, the Hugging Face repository to create or update")
    url = push(cfg.eval.checkpoint_path, cfg.hub.repo, private=cfg.hub.private, message=cfg.hub.message)
    print(f"pushed {cfg.eval.checkpoint_path} to {cfg.hub.repo}: {url}\nload it with duolm.load(\"{cfg.hub.repo}\")")
    return 0
