"""The papers' zero-shot likelihood sets and the detokenizers that undo their preprocessing.

Each set is detokenized first (duolm.data.detokenizers), as in the papers. Each set is a row of
duolm.data.sources.TEXT_SOURCES without a training split, read through HF `datasets` (its hub id by
default, or local files in the same format through `data.data_files`); it yields a validation
split only (the hub ids, splits and fields are in that table). WikiText-103 and LM1B are training
sets; `duolm eval data=wikitext103|lm1b` reads their validation (LM1B: test) split, detokenized the
same way.
"""
from __future__ import annotations

from duolm.data.detokenizers import join_wikitext_articles
from duolm.data.sources import ZERO_SHOT
from duolm.errors import SettingError
from duolm.io.hub_access import from_hub


def load_zero_shot(name: str, data_files=None) -> dict:
    """{'valid': detokenized documents} of a zero-shot set; data_files: local JSON/JSONL/CSV/Parquet
    files with the same field as the hub version (the split named in the table, or the only one)."""
    from datasets import load_dataset

    if name not in ZERO_SHOT:
        raise SettingError(f"`build_splits.source`: the zero-shot sets are {sorted(ZERO_SHOT)}, got {name!r}")
    spec = ZERO_SHOT[name]  # its valid_split is the one split a zero-shot set has
    if data_files:
        path = str(data_files if isinstance(data_files, str) else next(iter(dict(data_files).values())))
        fmt = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet", "txt": "text"}.get(
            path.rsplit(".", 1)[-1], "json")
        ds = load_dataset(fmt, data_files=data_files)
        split = ds[spec.valid_split] if spec.valid_split in ds else ds[next(iter(ds))]
    else:
        with from_hub(f"the dataset {spec.hub_id}", f"pass local files in the same format with "
                                                    f"data.data_files=<a .jsonl with a {spec.field!r} field>"):
            split = load_dataset(spec.hub_id, spec.config, split=spec.valid_split)
    if spec.field not in split.column_names:
        raise ValueError(f"data ({name}): expected a {spec.field!r} field, found {split.column_names}")
    texts = [r[spec.field] for r in split]
    if spec.join_wikitext_articles:
        texts = list(join_wikitext_articles(texts))
    docs = [spec.detokenize(t) for t in texts if t and t.strip()]
    if not docs:
        raise ValueError(f"data ({name}): no text in the {spec.valid_split} split")
    return {"valid": docs}
