"""MkDocs hook: the reference pages that are read off the code when the site is built (so they
cannot drift from it), and the benchmark pictures the results pages show.

- `<!-- duolm:cli -->` becomes every command's `--help` text (duolm.app.cli.command_help);
- `<!-- duolm:config -->` becomes every config group's options with their YAML (src/duolm/app/conf);
- the PNG files under benchmarks/results/ join the site at their repository paths, so a page links
  them as `../benchmarks/results/...` (relative to docs/).
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "src" / "duolm" / "app" / "conf"


def on_files(files, config):
    for png in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        files.append(File(str(png.relative_to(ROOT)), str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def _cli() -> str:
    from duolm.app.cli import COMMAND_HELP, USAGE, command_help

    parts = ["```text", USAGE.strip(), "```"]
    for command in COMMAND_HELP:
        parts += [f"## duolm {command}", "", "```text", command_help(command).strip(), "```", ""]
    return "\n".join(parts)


def _config() -> str:
    parts = ["## Defaults (config.yaml)", "", "```yaml", (CONF / "config.yaml").read_text().strip(), "```", ""]
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        parts += [f"## {group.name}", "", f"Options: {', '.join(f'`{group.name}={y.stem}`' for y in sorted(group.glob('*.yaml')))}", ""]
        for yaml in sorted(group.glob("*.yaml")):
            parts += [f"### {group.name}={yaml.stem}", "", "```yaml", yaml.read_text().strip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    if "<!-- duolm:cli -->" in markdown:
        markdown = markdown.replace("<!-- duolm:cli -->", _cli())
    if "<!-- duolm:config -->" in markdown:
        markdown = markdown.replace("<!-- duolm:config -->", _config())
    return markdown
