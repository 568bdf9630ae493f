"""Every figure block of the README and the docs names the JSON it came from, that file exists, and it
says when and where.

A figure block is one of the result sections (the reproduction on a hidden Markov model, the image
run: a page of the docs' results) or one `**Title**` paragraph group of a Measured section (the
README's headline figures and the docs' Measured page); tests/doc_pages.py lists the pages. Each must cite at least one
results file under benchmarks/results/ (a .json, or a folder of them) that exists. Every cited JSON that
records its provenance (benchmarks/provenance.py: "date", "machine", "command", "commit") must have its
date quoted in the block, so a table is never silently older than the file it names. Results written
before provenance was recorded are listed in UNDATED with the date the block must state.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from doc_pages import documentation, label

ROOT = Path(__file__).resolve().parents[1]
RESULT_SECTIONS = ("Reproducing the papers' claims on one CPU", "Images on one CPU")
# results made before benchmarks recorded their provenance: path -> the date the block must state
UNDATED = {"benchmarks/results/builtin/": "2026-11-27"}
CITED = re.compile(r"benchmarks/results/[\w./-]+")


def figure_blocks(text: str) -> dict[str, str]:
    sections = re.split(r"(?m)^(?=##? )", text)  # a page's title (#) or a README section (##)
    blocks = {}
    for section in sections:
        title = section.splitlines()[0].lstrip("#").strip() if section else ""
        if title.startswith(RESULT_SECTIONS):
            blocks[title] = section
        elif title == "Measured":
            for part in re.split(r"(?m)^(?=\*\*)", section)[1:]:
                blocks[part.split("**")[1]] = part
    return blocks


def all_blocks() -> dict[str, str]:
    """Every page's figure blocks, named 'page: block'."""
    return {f"{label(page)}: {name}": block for page in documentation()
            for name, block in figure_blocks(page.read_text()).items()}


def test_the_readme_has_its_figure_blocks():
    blocks = all_blocks()
    assert len(blocks) >= 7, sorted(blocks)  # the two result sections and the Measured blocks
    assert any(name.startswith("README.md: ") for name in blocks)  # the front door's headline figures


@pytest.mark.parametrize("name", sorted(all_blocks()))
def test_every_figure_block_names_an_existing_dated_json(name):
    block = all_blocks()[name]
    cited = sorted({c.rstrip(".,;:)") for c in CITED.findall(block)})
    jsons = [c for c in cited if c.endswith(".json") or (ROOT / c).is_dir()]
    assert jsons, f"README block {name!r} names no results JSON under benchmarks/results/"
    for c in jsons:
        path = ROOT / c
        assert path.exists(), f"README block {name!r} cites {c}, which does not exist"
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        assert files, f"README block {name!r} cites the folder {c}, which holds no JSON"
        if c in UNDATED or c + "/" in UNDATED:
            date = UNDATED.get(c) or UNDATED[c + "/"]
            assert date in block, f"README block {name!r} must say its results in {c} are from {date}"
            continue
        for f in files:
            record = json.loads(f.read_text())
            assert {"date", "machine"} <= set(record), f"{f.relative_to(ROOT)} records no date and machine"
            assert record["date"] in block, (f"README block {name!r} does not quote the date of "
                                             f"{f.relative_to(ROOT)} ({record['date']})")


def test_the_checker_finds_a_block_without_a_source():
    text = "## Measured\n\n**Speed**: 3.2 s per step.\n\n**Other** (`benchmarks/results/none.json`): 1.0\n"
    blocks = figure_blocks(text)
    assert set(blocks) == {"Speed", "Other"}
    assert not CITED.findall(blocks["Speed"])
    assert not (ROOT / CITED.findall(blocks["Other"])[0]).exists()
