"""The papers' zero-shot likelihood sets and the detokenizers that undo their preprocessing.

Each set is detokenized first (duolm.data.detokenizers), as in the papers. Each set is read through HF `datasets` (its hub id by default, or local files in the
same format through `data.data_files`) and yields a validation split only. WikiText-103 and LM1B
are training sets (duolm.data.corpora); `duolm eval data=wikitext103|lm1b` reads their
validation (LM1B: test) split, detokenized the same way.

    set          hub id (config)                    split        field
    ptb          ptb_text_only                      validation   sentence
    wikitext2    wikitext (wikitext-2-raw-v1)       validation   text (articles rejoined)
    lambada      EleutherAI/lambada_openai          test         text
    ag_news      ag_news                            test         text
    pubmed       scientific_papers (pubmed)         validation   article
    arxiv        scientific_papers (arxiv)          validation   article
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from duolm.data.detokenizers import (identity, join_wikitext_articles, lambada_detokenize, ptb_detokenize,
                                     scientific_papers_detokenize, wikitext_detokenize)


@dataclass(frozen=True)
class ZeroShotSet:
    hub_id: str
    config: str | None
    split: str
    field: str
    detokenize: Callable[[str], str]
    join_wikitext_articles: bool = False


ZERO_SHOT = {
    "ptb": ZeroShotSet("ptb_text_only", None, "validation", "sentence", ptb_detokenize),
    "wikitext2": ZeroShotSet("wikitext", "wikitext-2-raw-v1", "validation", "text", wikitext_detokenize, True),
    "lambada": ZeroShotSet("EleutherAI/lambada_openai", "default", "test", "text", lambada_detokenize),
    "ag_news": ZeroShotSet("ag_news", None, "test", "text", identity),
    "pubmed": ZeroShotSet("scientific_papers", "pubmed", "validation", "article", scientific_papers_detokenize),
    "arxiv": ZeroShotSet("scientific_papers", "arxiv", "validation", "article", scientific_papers_detokenize),
}


def load_zero_shot(name: str, data_files=None) -> dict:
    """{'valid': detokenized documents} of a zero-shot set; data_files: local JSON/JSONL/CSV/Parquet
    files with the same field as the hub version (the split named in the table, or the only one)."""
    from datasets import load_dataset

    if name not in ZERO_SHOT:
        raise ValueError(f"data.source: the zero-shot sets are {sorted(ZERO_SHOT)}, got {name!r}")
    spec = ZERO_SHOT[name]
    if data_files:
        path = str(data_files if isinstance(data_files, str) else next(iter(dict(data_files).values())))
        fmt = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}.get(
            path.rsplit(".", 1)[-1], "json")
        ds = load_dataset(fmt, data_files=data_files)
        split = ds[spec.split] if spec.split in ds else ds[next(iter(ds))]
    else:
        split = load_dataset(spec.hub_id, spec.config, split=spec.split)
    if spec.field not in split.column_names:
        raise ValueError(f"data ({name}): expected a {spec.field!r} field, found {split.column_names}")
    texts = [r[spec.field] for r in split]
    if spec.join_wikitext_articles:
        texts = list(join_wikitext_articles(texts))
    docs = [spec.detokenize(t) for t in texts if t and t.strip()]
    if not docs:
        raise ValueError(f"data ({name}): no text in the {spec.split} split")
    return {"valid": docs}
