"""The text sources read through HF `datasets`: one row each, for every way duolm reads them.

A row says where the text is on the Hub (id, config, split names, the text field) and how the
papers preprocess it (the detokenizer, WikiText's article rejoining), and how duolm may read it:
into a token store for training (``corpora.hf_source``), as a stream (``streaming``), or, with no
training split, as a zero-shot likelihood set (``zero_shot``). The readers ask these rows; no
hub id, split or field is written anywhere else. Every row also reads local files in the same
format (``data.data_files``), which is how the tests read them offline.

Held-out rules: a row with ``valid_split`` reads that split; OpenWebText has none and holds out
its last documents (``holdout``), text8 is one string cut 90 / 5 / 5 by characters; a stream without
a validation split holds out its first ``data.valid_docs`` documents. The user's own corpora
(``data=local``) and big.txt hold out every n-th document (``corpora``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from duolm.data.detokenizers import (
    identity,
    lambada_detokenize,
    lm1b_detokenize,
    ptb_detokenize,
    scientific_papers_detokenize,
    wikitext_detokenize,
)

# what to pass instead of a hub dataset that cannot be reached
LOCAL_FILES = ("pass local files in the same format with data.data_files=<a .jsonl, or {train: a.jsonl, "
               "validation: b.jsonl}>, or train on data=bigtxt (offline)")


@dataclass(frozen=True)
class TextSource:
    hub_id: str
    config: str | None
    field: str
    train_split: str | None              # None: an evaluation-only (zero-shot) set
    valid_split: str | None              # None: held out of the training split (see the module docstring)
    detokenize: Callable[[str], str] = identity
    join_wikitext_articles: bool = False  # rows are lines of articles, rejoined at the ' = Title = ' lines
    store: bool = True                   # read into a token store for training (False: streaming only)
    streams: bool = False                # data.streaming=true reads it
    holdout: int | None = None           # no valid split: this many last documents held out (store)
    by_characters: bool = False          # one long string (text8): cut 90 / 5 / 5 by characters


TEXT_SOURCES: dict[str, TextSource] = {
    # training sets
    "openwebtext": TextSource("openwebtext", None, "text", "train", None, streams=True, holdout=100_000),
    "lm1b": TextSource("lm1b", None, "text", "train", "test", lm1b_detokenize, streams=True),
    "wikitext103": TextSource("wikitext", "wikitext-103-raw-v1", "text", "train", "validation", wikitext_detokenize,
                              join_wikitext_articles=True),
    "text8": TextSource("afmck/text8", None, "text", "train", None, by_characters=True),
    "fineweb-edu": TextSource("HuggingFaceFW/fineweb-edu", "sample-10BT", "text", "train", None, store=False,
                              streams=True),
    # the papers' zero-shot likelihood sets (validation only)
    "ptb": TextSource("ptb_text_only", None, "sentence", None, "validation", ptb_detokenize),
    "wikitext2": TextSource("wikitext", "wikitext-2-raw-v1", "text", None, "validation", wikitext_detokenize,
                            join_wikitext_articles=True),
    "lambada": TextSource("EleutherAI/lambada_openai", "default", "text", None, "test", lambada_detokenize),
    "ag_news": TextSource("ag_news", None, "text", None, "test"),
    "pubmed": TextSource("scientific_papers", "pubmed", "article", None, "validation", scientific_papers_detokenize),
    "arxiv": TextSource("scientific_papers", "arxiv", "article", None, "validation", scientific_papers_detokenize),
}

TRAINING_SETS = {name: s for name, s in TEXT_SOURCES.items() if s.train_split is not None and s.store}
STREAMS = {name: s for name, s in TEXT_SOURCES.items() if s.streams}
ZERO_SHOT = {name: s for name, s in TEXT_SOURCES.items() if s.train_split is None}
STREAM_ONLY = tuple(name for name, s in TEXT_SOURCES.items() if s.streams and not s.store)
