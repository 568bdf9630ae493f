"""The documentation a user reads, in reading order: README.md, then the docs site's pages in the
order of mkdocs.yml's nav (tests/test_documented_commands.py runs their commands in this order, so a
page may use what an earlier one made; tests/test_readme_figures.py checks their figures)."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def nav_pages() -> list[Path]:
    """The docs pages of mkdocs.yml's nav, in order."""
    out = []

    def walk(entries):
        for entry in entries:
            value = entry if isinstance(entry, str) else next(iter(entry.values()))
            if isinstance(value, list):
                walk(value)
            else:
                out.append(ROOT / "docs" / value)

    walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    return out


def documentation() -> list[Path]:
    return [ROOT / "README.md", *nav_pages()]


def label(path: Path) -> str:
    return str(path.relative_to(ROOT))
