"""Sample quality against sampling steps, drawn from several `duolm eval eval.samples=...` results."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

LABELS = {"gen_ppl": "generative perplexity (judge)", "entropy": "unigram entropy of samples (nats)",
          "mauve": "MAUVE", "gen_nll": "judge NLL per token (nats)",
          "scoring_bits_per_token": "NELBO under the scoring model (bits/token)",
          "classifier_fid": "FID (duolm's classifier features; not Inception)",
          "classifier_is": "IS (duolm's classifier; not Inception)", "classifier_accuracy": "class accuracy of samples",
          "inception_fid": "FID (Inception-v3)", "inception_is": "Inception Score"}


def series_label(result: dict) -> str:
    """One line per model and sampler: 'duo psi (greedy tail)'; a 'label' field wins."""
    if result.get("label"):
        return str(result["label"])
    sampler = result.get("sampler") or {}
    predictor = sampler.get("predictor", "")
    tail = result.get("noise_removal") or sampler.get("noise_removal")
    if predictor == "psi":  # which kappa modes: 'psi max-capped 0.005'
        modes = {(k.get("mode"), k.get("eta")) for k in (sampler.get("kappa") or {}).values() if isinstance(k, dict)}
        predictor += "".join(f" {m}" + (f" {e:g}" if e else "") for m, e in sorted(modes))
    text = f"{result.get('algo', '?')} {predictor}".strip()
    return f"{text} ({tail} tail)" if tail and predictor != "ar" else text


def _save(fig, output) -> Path:
    """Write a figure as a PNG (its folder made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def load_results(paths) -> list[dict]:
    out = []
    for p in paths:
        p = Path(p)
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{p}: not a readable results JSON ({err})") from None
        if "steps" not in r:
            raise ValueError(f"{p}: no 'steps' field; plot the output of duolm eval eval.samples=...")
        out.append({**r, "_path": str(p)})
    return out


def plot_quality_vs_steps(results: list[dict], output, metrics=("gen_ppl", "entropy")) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in r for r in results)]
    if not metrics:
        raise ValueError("none of the results holds the metrics to plot")
    series = defaultdict(list)
    several = len({r.get("checkpoint") for r in results}) > 1
    for r in results:
        label = series_label(r)
        if several and r.get("checkpoint") and not r.get("label"):
            label = f"{'/'.join(Path(r['checkpoint']).parts[-2:])}: {label}"   # which model, when several
        series[label].append(r)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, rows in sorted(series.items()):
            rows = sorted((r for r in rows if metric in r), key=lambda r: r["steps"])
            if rows:
                ax.plot([r["steps"] for r in rows], [r[metric] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        if metric in ("gen_ppl", "classifier_fid", "inception_fid"):
            ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, output)


RL_PANELS = (("reward", "mean reward of the groups"), ("accuracy", "accuracy: groups (dots) and held-out (line)"),
             ("kl", "KL to the reference (k3)"), ("completion_length", "completion length (tokens)"))


def plot_rl_history(rows: list[dict], output) -> Path:
    """Reward, accuracy (the groups' and the held-out prompts'), KL and completion length against the
    RL step, from the rows of a `duolm rl` run's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in RL_PANELS if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.4 * max(1, len(panels)), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*pts), ".", alpha=0.5, color="tab:blue")
        if len(pts) >= 8:  # a running mean over a tenth of the run
            w = max(2, len(pts) // 10)
            ys = [sum(y for _, y in pts[max(0, i - w + 1):i + 1]) / len(pts[max(0, i - w + 1):i + 1])
                  for i in range(len(pts))]
            ax.plot([x for x, _ in pts], ys, color="tab:blue")
        if key == "accuracy":
            held = [(r["step"], r["valid_accuracy"]) for r in rows if "valid_accuracy" in r]
            if held:
                ax.plot(*zip(*held), "o-", color="tab:orange", label="held-out")
                ax.legend(fontsize=8)
        ax.set_xlabel("RL step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, output)
