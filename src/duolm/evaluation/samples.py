"""Sample-quality measures that need no judge model."""
from __future__ import annotations

import torch

from duolm.data.statistics import entropy_of_counts
from duolm.errors import SettingError
from duolm.evaluation.judge import generative_perplexity, load_judge
from duolm.evaluation.likelihood import evaluate_nelbo


def token_entropy(ids: torch.Tensor) -> float:
    """Entropy in nats of the frequencies of the token ids in `ids` (any shape), pooled."""
    return entropy_of_counts(torch.bincount(ids.reshape(-1)))


def unigram_entropy(x: torch.Tensor) -> torch.Tensor:
    """(n,) entropy in nats of each sample's own token histogram, as the papers report it.

    Repetitive, collapsed samples score low; samples as varied as the data score like the data.
    """
    if x.dim() != 2:
        raise ValueError(f"expected (n, L) token ids, got shape {tuple(x.shape)}")
    return torch.tensor([token_entropy(row) for row in x], dtype=torch.float64)


def read_mauve_texts(path) -> list[str]:
    """Reference texts for MAUVE: a .jsonl of {"text": ...} or a .txt of blank-line-separated paragraphs."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.mauve_texts: {path} is not a file")
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()]


def _judge_features(judge, texts: list[str], max_tokens: int = 1024) -> torch.Tensor:
    """(n, d) last-layer state at each text's last token: MAUVE's featurization, with the judge."""
    feats = []
    with torch.no_grad():
        for t in texts:
            ids = judge.tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] or [judge.eos_id or 0]
            out = judge.model(input_ids=torch.tensor([ids], device=judge.device), output_hidden_states=True)
            feats.append(out.hidden_states[-1][0, -1].float().cpu())
    return torch.stack(feats)


def mauve_score(judge, samples: list[str], texts: list[str], seed: int = 25) -> float:
    try:
        import mauve
    except ImportError:
        raise ImportError("eval.mauve_texts is set, but MAUVE needs the mauve-text package "
                          "(pip install mauve-text)") from None
    p = _judge_features(judge, texts).numpy()
    q = _judge_features(judge, samples).numpy()
    return float(mauve.compute_mauve(p_features=p, q_features=q, seed=seed, verbose=False).mauve)


def scoring_nelbo(scoring_model, ids: list[list[int]], *, time_samples: int = 8, device=None) -> dict:
    """The samples' NELBO per token under a scoring model (a duolm Pretrained, e.g. the
    teacher of a distilled model, sampled with many steps): an upper bound on their NLL under it,
    a judge that shares the samples' tokenizer. Lower means more likely under the scoring model."""
    import math

    lengths = {len(r) for r in ids}
    if lengths != {scoring_model.config["length"]}:
        raise SettingError(f"`score_samples_file.scoring_model` reads blocks of {scoring_model.config['length']} tokens; the samples "
                         f"have lengths {sorted(lengths)}")
    x = torch.tensor(ids)
    if int(x.max()) >= scoring_model.tokenizer.vocab_size:
        raise SettingError("`score_samples_file.scoring_model`: the samples hold token ids outside its vocabulary "
                         f"({scoring_model.tokenizer.vocab_size}); it must share the samples' tokenizer")
    ev = evaluate_nelbo(scoring_model.method, scoring_model.backbone, x, torch.ones_like(x, dtype=torch.float32),
                        batch_size=64, time_samples=time_samples, device=device)
    return {"scoring_nelbo": ev["nll"], "scoring_nelbo_se": ev["nll_se"],
            "scoring_bits_per_token": ev["nll"] / math.log(2), "scoring_time_samples": time_samples}


def score_samples_file(path, *, judge: str | None = "smollm2", judge_context: int | None = None,
                       judge_batch_size: int = 8, mauve_texts=None, device=None, progress: bool = True,
                       loaded_judge=None, scoring_model=None, scoring_time_samples: int = 8) -> dict:
    """The sample-quality record of one `duolm sample` output: its sampler settings, the mean
    unigram entropy of the samples' token ids, generative perplexity under the judge, MAUVE.
    loaded_judge: a duolm.evaluation.judge.Judge already loaded (scoring many files);
    scoring_model: a duolm Pretrained whose NELBO of the samples is reported (scoring_nelbo)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        rows = data["samples"]
        ids = [r["ids"] for r in rows]
        texts = [r["text"] for r in rows]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise SettingError(f"`score_samples_file.path`: {path} is not a duolm samples file ({err!r})") from None
    if not rows:
        raise SettingError(f"`score_samples_file.path`: {path} holds no samples")
    lengths = {len(r) for r in ids}
    ent = torch.cat([unigram_entropy(torch.tensor([r for r in ids if len(r) == n])) for n in sorted(lengths)])
    out = {k: data[k] for k in ("checkpoint", "algo", "steps", "sampler", "noise_removal", "seed", "num_samples", "length",
                                "seconds_per_sample") if k in data}
    out.update({"samples_file": str(path), "entropy": float(ent.mean()), "entropy_se":
                float(ent.std() / len(ent) ** 0.5) if len(ent) > 1 else float("nan")})
    if scoring_model is not None:
        out.update(scoring_nelbo(scoring_model, ids, time_samples=scoring_time_samples, device=device))
    if judge or mauve_texts:
        j = loaded_judge or load_judge(judge or "smollm2", device=device, context=judge_context)
        if judge:
            out.update(generative_perplexity(j, texts, markers=data.get("document_markers", ()),
                                             batch_size=judge_batch_size, progress=progress))
        if mauve_texts:
            out["mauve"] = mauve_score(j, texts, read_mauve_texts(mauve_texts))
    return out
