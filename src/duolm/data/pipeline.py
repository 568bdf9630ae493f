"""From a data source and a tokenizer to a token store on disk, read as fixed-length blocks.

Tokenizing OpenWebText takes hours, so the result is a store in `data.cache_dir` (duolm.data.store),
keyed by everything that changes it (source, its files' sizes and times, tokenizer, length, block
mode); a second run, and every other rank, maps it at once. Documents are read incrementally and
tokenized in parallel batches (duolm.data.encode): memory does not grow with the corpus. The build
is atomic and under a file lock: one process builds, the others wait and map the same files.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

from duolm.atomic import atomic_directory
from duolm.data import corpora
from duolm.data.encode import encode_documents
from duolm.data.store import STORE_VERSION, Split, SplitWriter, StoreError, open_store
from duolm.data.zero_shot import ZERO_SHOT, load_zero_shot

EVAL_ONLY = tuple(ZERO_SHOT)  # the papers' zero-shot sets
SOURCES = ("bigtxt", "local", *corpora.HF_SOURCES, *EVAL_ONLY)
BLOCK_MODES = ("wrap", "pad", "pack")


def _fingerprint(source: str, kwargs: dict) -> dict:
    fp = {"source": source, **{k: str(v) for k, v in kwargs.items()}}
    paths = []
    if source == "bigtxt":
        paths = [corpora.big_txt_path()]
    elif source == "local":
        p = Path(kwargs["path"]).expanduser()
        paths = sorted(p.rglob("*")) if p.is_dir() else [p]
    elif kwargs.get("data_files"):
        paths = [Path(x) for x in ([kwargs["data_files"]] if isinstance(kwargs["data_files"], str)
                                   else list(kwargs["data_files"].values()))]
    fp["files"] = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in paths if p.is_file()]
    return fp


def load_documents(source: str, **kwargs) -> tuple[dict, bool]:
    """{'train': docs, 'valid': docs} and whether the documents are already token ids."""
    if source == "bigtxt":
        return corpora.builtin_bigtxt(), False
    if source == "local":
        fmt, field = kwargs.get("format", "auto"), kwargs.get("text_field", "text")
        docs, are_ids = corpora.local_documents(kwargs["path"], fmt, field)
        if kwargs.get("valid_path"):
            valid, _ = corpora.local_documents(kwargs["valid_path"], fmt, field)
            return {"train": docs, "valid": valid}, are_ids
        return corpora.split_local(docs, kwargs.get("valid_fraction", 0.05)), are_ids
    if source in EVAL_ONLY:
        return load_zero_shot(source, kwargs.get("data_files")), False
    if source in corpora.HF_SOURCES:
        return corpora.HF_SOURCES[source](data_files=kwargs.get("data_files")), False
    raise ValueError(f"data.source must be one of {list(SOURCES)}, got {source!r}")


def check_data(source: str, mode: str) -> None:
    """The data settings that need no file: a known source and block mode."""
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {list(SOURCES)}, got {source!r}")
    if mode not in BLOCK_MODES:
        raise ValueError(f"data.blocks must be one of {list(BLOCK_MODES)}, got {mode!r}")


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (ranks on one machine, or a shared file system that
    honours flock); a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_splits(source: str, tokenizer, length: int, mode: str = "wrap", cache_dir: str | None = None,
                 num_proc: int | None = None, **kwargs) -> dict[str, Split]:
    """{'train': Split, 'valid': Split} (only 'valid' for the zero-shot sets) of `source`, from its
    token store in cache_dir (built first when missing, incomplete or corrupt; a temporary folder
    when cache_dir is None). num_proc: tokenizer processes (default: this machine's cores)."""
    check_data(source, mode)
    key = json.dumps({"fp": _fingerprint(source, kwargs), "tok": tokenizer.to_dict(), "V": tokenizer.vocab_size,
                      "L": length, "mode": mode, "v": STORE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    keepalive = None
    if cache_dir is None:
        keepalive = tempfile.TemporaryDirectory(prefix="duolm-store-")
        root = Path(keepalive.name)
    else:
        root = Path(cache_dir).expanduser()
    store = root / f"{source}-{digest}"
    frame = dict(key=key, mode=mode, length=length, bos=tokenizer.bos_id, eos=tokenizer.eos_id,
                 pad=tokenizer.pad_id, keepalive=keepalive)
    try:
        with _file_lock(root / f".{source}-{digest}.lock"):
            if store.exists():
                try:
                    return open_store(store, **frame)
                except StoreError as err:
                    print(f"duolm: data.cache_dir: the token store {store} is unusable ({err}); rebuilding it",
                          file=sys.stderr)
            _build_store(store, source, tokenizer, length, mode, key, num_proc, kwargs)
            return open_store(store, **frame)
    except OSError as err:
        raise ValueError(f"data.cache_dir: cannot write the token store in {root} "
                         f"({err.strerror or type(err).__name__}); nothing was kept") from None


def _build_store(store: Path, source: str, tokenizer, length: int, mode: str, key: str, num_proc, kwargs):
    docs, are_ids = load_documents(source, **kwargs)
    meta = {"version": STORE_VERSION, "key": key, "splits": {}}
    with atomic_directory(store) as tmp:
        for split, items in docs.items():
            writer = SplitWriter(tmp / split, mode=mode, length=length, bos=tokenizer.bos_id, eos=tokenizer.eos_id,
                                 vocab_size=tokenizer.vocab_size, source=f"data ({source}, {split})")
            for batch in encode_documents(items, tokenizer, num_proc=num_proc, are_ids=are_ids):
                writer.add(batch)
            if writer.n_docs == 0:
                raise ValueError(f"data ({source}): the {split} split is empty")
            meta["splits"][split] = writer.close()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def unigram_entropy_bits(split: Split, vocab_size: int) -> float:
    """Entropy of the token frequencies of a split, bits per token: the baseline any model must beat."""
    from duolm.evaluation.samples import entropy_of_counts

    return entropy_of_counts(split.token_counts(vocab_size)) / math.log(2)
