"""duolm view and duolm plot: pictures of results files (no model is loaded)."""
from __future__ import annotations

import json
from pathlib import Path

from duolm.app.fields import config_message
from duolm.evaluation.plots import load_results, plot_quality_vs_steps
from duolm.evaluation.trajectory_page import write_page


def cmd_view(files) -> int:
    """duolm view samples.json [...]: one self-contained HTML page per file, next to it."""
    if not files:
        raise ValueError("duolm view needs a samples JSON written with sampling.trajectory=true "
                         "(duolm view outputs/run/samples.json)")
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"{name}: no such samples file")
        try:
            result = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{name} is not a samples JSON (duolm sample's output)") from None
        if not isinstance(result, dict) or "samples" not in result:
            raise ValueError(f"{name} is not a samples JSON (duolm sample's output)")
        try:
            out = write_page(result, path.with_suffix(".html"), title=f"duolm · {path.name}")
        except ValueError as err:  # the library's sentence, in config keys
            raise ValueError(f"{name}: {config_message(err)}") from None
        print(f"wrote {out} (open it in any browser)")
    return 0


def cmd_plot(cfg, files):
    if not files:
        raise ValueError("duolm plot needs results files: duolm plot a.eval.json b.eval.json [plot.output=x.png]")
    out = plot_quality_vs_steps(load_results(files), cfg.plot.output, list(cfg.plot.metrics))
    print(f"{len(files)} results -> {out}")
    return 0
