"""The `data` config group -> a tokenizer and the splits of the token store (text) or of the images."""
from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from duolm.app.config import is_image_data
from duolm.data.images import build_image_splits
from duolm.data.pipeline import build_splits, stream_splits
from duolm.data.tokenizers import load_tokenizer


def plain(value):
    """A config value as plain Python: the library (and HF datasets, which tests isinstance(dict))
    never sees an omegaconf container; `data.data_files={train: a.jsonl, validation: b.jsonl}` from
    the command line is a DictConfig."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def source_kwargs(data_cfg) -> dict:
    keys = ("path", "format", "text_field", "valid_path", "valid_fraction", "data_files", "task")
    return {k: plain(data_cfg[k]) for k in keys if k in data_cfg and data_cfg[k] is not None}


def load_data(cfg, tokenizer=None, length: int | None = None):
    """(tokenizer, splits) of cfg.data in blocks of `length` (default: model.length); images come
    with their own pixel tokenizer and labels."""
    if is_image_data(cfg):
        return build_image_splits(cfg.data.source, cfg.data.levels, cfg.data.get("cache_dir"),
                                  plain(cfg.data.get("data_files")), num_classes=cfg.data.num_classes)
    tokenizer = tokenizer or load_tokenizer(cfg.data.tokenizer)
    if cfg.data.get("streaming"):
        splits = stream_splits(cfg.data.source, tokenizer, length or cfg.model.length, cfg.data.get("cache_dir"),
                               cfg.data.get("num_proc"), seed=cfg.seed, shuffle_buffer=cfg.data.get("shuffle_buffer", 0),
                               valid_docs=cfg.data.get("valid_docs", 1000), data_files=plain(cfg.data.get("data_files")))
        return tokenizer, splits
    splits = build_splits(cfg.data.source, tokenizer, length or cfg.model.length, cfg.data.blocks,
                          cfg.data.get("cache_dir"), num_proc=cfg.data.get("num_proc"), **source_kwargs(cfg.data))
    return tokenizer, splits
