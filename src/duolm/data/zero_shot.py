"""The papers' zero-shot likelihood sets and the detokenizers that undo their preprocessing.

Several of these corpora were tokenized by their authors (spaces around punctuation, `@-@` for
hyphens, `N` for numbers, ...). A GPT-2 model trained on raw web text would be charged for that
odd spacing, so, as in the papers, the text is put back into ordinary form before it is
tokenized. Each set is read through HF `datasets` (its hub id by default, or local files in the
same format through `data.data_files`) and yields a validation split only.

    set          hub id (config)                    split        field
    ptb          ptb_text_only                      validation   sentence
    wikitext2    wikitext (wikitext-2-raw-v1)       validation   text (articles rejoined)
    wikitext103  wikitext (wikitext-103-raw-v1)     validation   text (articles rejoined)
    lm1b         lm1b                               test         text
    lambada      EleutherAI/lambada_openai          test         text
    ag_news      ag_news                            test         text
    pubmed       scientific_papers (pubmed)         validation   article
    arxiv        scientific_papers (arxiv)          validation   article
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


def _contractions(x: str) -> str:
    x = re.sub(r" n't\b", "n't", x)
    x = re.sub(r" '(s|re|ve|ll|d|m)\b", r"'\1", x)
    return re.sub(r"s ' ", "s' ", x)


def _punctuation(x: str) -> str:
    x = re.sub(r" ([.,;:!?%])", r"\1", x)          # no space before closing punctuation
    x = re.sub(r"([(\[{$#]) ", r"\1", x)            # none after opening brackets and currency
    x = re.sub(r" ([)\]}])", r"\1", x)
    return x


def ptb_detokenize(x: str) -> str:
    """Penn Treebank (Mikolov's version): lower-cased, `N` for numbers, `<unk>`, split clitics."""
    x = x.replace("\\/", "/").replace(" \n ", "\n")
    x = re.sub(r"(?<=\s)N(?=\s|$)", "1", " " + x)[1:]   # a number token, wherever it stands
    x = _punctuation(_contractions(x))
    return x.replace("<unk>", "?")  # after the punctuation rules, so it is not glued to the word before


def wikitext_detokenize(x: str) -> str:
    """WikiText: `@-@`, `@,@`, `@.@` inside numbers and words, spaced punctuation, `= = Title = =`."""
    x = x.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    x = re.sub(r"= = = = ", "==== ", x)
    x = re.sub(r" = = = =", " ====", x)
    x = re.sub(r"= = = ", "=== ", x)
    x = re.sub(r" = = =", " ===", x)
    x = re.sub(r"= = ", "== ", x)
    x = re.sub(r" = =", " ==", x)
    x = re.sub(r'" ([^"]*?) "', r'"\1"', x)            # "quoted text" without inner spaces
    x = _contractions(x)
    x = x.replace(" \n", "\n").replace("\n ", "\n")
    return _punctuation(x[1:] if x.startswith(" ") else x)  # every WikiText line opens with a space


def lm1b_detokenize(x: str) -> str:
    """One Billion Words: tokenized news sentences (split clitics, spaced punctuation, spaced URLs)."""
    x = re.sub(r"(https?) : / / ", r"\1://", x)
    x = re.sub(r'" ([^"]*?) "', r'"\1"', x)
    x = re.sub(r" - ", "-", x)
    return _punctuation(_contractions(x))


def lambada_detokenize(x: str) -> str:
    """LAMBADA (OpenAI's version): curly quotes to straight ones; a passage starts on a new line."""
    return "\n" + x.replace("\u201c", '"').replace("\u201d", '"').strip()


def scientific_papers_detokenize(x: str) -> str:
    """PubMed / arXiv articles: tokenized like WikiText and LM1B at once."""
    return lm1b_detokenize(wikitext_detokenize(x))


def identity(x: str) -> str:
    return x


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
    "wikitext103": ZeroShotSet("wikitext", "wikitext-103-raw-v1", "validation", "text", wikitext_detokenize, True),
    "lm1b": ZeroShotSet("lm1b", None, "test", "text", lm1b_detokenize),
    "lambada": ZeroShotSet("EleutherAI/lambada_openai", "default", "test", "text", lambada_detokenize),
    "ag_news": ZeroShotSet("ag_news", None, "test", "text", identity),
    "pubmed": ZeroShotSet("scientific_papers", "pubmed", "validation", "article", scientific_papers_detokenize),
    "arxiv": ZeroShotSet("scientific_papers", "arxiv", "validation", "article", scientific_papers_detokenize),
}


def load_zero_shot(name: str, data_files=None) -> dict:
    """{'valid': detokenized documents} of a zero-shot set; data_files: local JSON/JSONL/CSV/Parquet
    files with the same field as the hub version (the split named in the table, or the only one)."""
    from datasets import load_dataset

    from duolm.data.corpora import _join_wikitext

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
        texts = _join_wikitext(texts)
    docs = [spec.detokenize(t) for t in texts if t and t.strip()]
    if not docs:
        raise ValueError(f"data ({name}): no text in the {spec.split} split")
    return {"valid": docs}
