"""The docs site builds with `mkdocs build --strict` (no broken link, no page outside the nav, every
API reference resolvable), every page under docs/ is in the nav, and the README stays a front door."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from doc_pages import ROOT, nav_pages


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    pages = set(nav_pages())
    on_disk = {p for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == pages, {"not in the nav": sorted(map(str, on_disk - pages)),
                              "missing": sorted(map(str, pages - on_disk))}


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 25_000, len(text)
    for section in ("## Quick start", "## What it does", "## Measured", "## Citation"):
        assert section in text


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "duolm train" in cli and "duolm sample" in cli  # read off the code at build time
    assert (tmp_path / "site" / "benchmarks" / "results" / "builtin" / "few_step.png").is_file()
