"""duolm eval: the validation NELBO of a model on data=..., or the quality of samples files
(generative perplexity, entropy, MAUVE for text; FID, IS and class accuracy for images)."""
from __future__ import annotations

import json
from pathlib import Path

from duolm.app.config import is_image_data
from duolm.app.data_settings import load_data, plain
from duolm.app.loading import data_given, load_for_eval, model_path, perplexity_line, unit_of
from duolm.app.loading import device as default_device
from duolm.app.outputs import results_dir
from duolm.checkpoints.loading import load_pretrained
from duolm.data.images import IMAGE_SOURCES, build_image_splits
from duolm.data.statistics import unigram_entropy_bits
from duolm.data.tokenizers import is_image
from duolm.evaluation import evaluate_nelbo
from duolm.evaluation.image_metrics import check_inception, score_image_samples
from duolm.evaluation.judge import load_judge
from duolm.evaluation.samples import score_samples_file
from duolm.io.atomic import write_json


def cmd_eval(cfg, parts):
    if cfg.eval.get("samples"):
        return cmd_eval_samples(cfg)
    pre, device = load_for_eval(cfg)
    splits, data_name = eval_splits(cfg, pre)
    ev = evaluate_nelbo(pre.method, pre.backbone, splits["valid"],
                        batch_size=cfg.eval.batch_size, time_samples=cfg.eval.time_samples,
                        max_batches=cfg.eval.max_batches, device=device, progress=True, eos_id=pre.tokenizer.eos_id)
    base = unigram_entropy_bits(splits["valid"], pre.tokenizer.vocab_size)
    print(perplexity_line(f"{pre.method.name} on {data_name}", ev, base, unit_of(pre)))
    out = Path(cfg.eval.output or results_dir(cfg) / "eval.json")
    # the schedule the bound was computed with (for a model without a noise-level input, DiffusionGemma,
    # an assumption the loader states)
    write_json({**ev, "checkpoint": model_path(cfg), "data": data_name, "algo": pre.method.name,
                "noise": pre.config.get("noise"), "unigram_bits_per_token": base}, out)
    print(json.dumps(ev))
    print(f"-> {out}")
    return 0


def eval_splits(cfg, pre) -> tuple[dict, str]:
    """The validation data a loaded model is scored on: data=... for text models; for image models
    the images they were trained on (or data=..., which must then be image data of their shape)."""
    given = data_given(cfg)
    if not is_image(pre.tokenizer):
        if is_image_data(cfg):
            raise ValueError(f"the model at {model_path(cfg)} is a text model; data={cfg.data.name} is images")
        return load_data(cfg, pre.tokenizer, pre.config["length"])[1], cfg.data.name
    source = cfg.data.source if given else pre.config.get("data")
    if given and not is_image_data(cfg):
        raise ValueError(f"the model at {model_path(cfg)} is an image model; evaluate it on image data "
                         f"(data={pre.config.get('data') or 'mnist'}), not data={cfg.data.name}")
    if source not in IMAGE_SOURCES:
        raise ValueError(f"the model at {model_path(cfg)} does not say which images it was trained on; add "
                         f"data=<{'|'.join(IMAGE_SOURCES)}>")
    tok = pre.tokenizer
    splits = build_image_splits(source, tok.levels, cfg.data.get("cache_dir"),
                                plain(cfg.data.get("data_files")) if given else None, num_classes=pre.num_classes)[1]
    if splits["valid"].length != tok.length:
        raise ValueError(f"the model at {model_path(cfg)} reads {tok.channels}x{tok.image_size}x{tok.image_size} "
                         f"images; data={source} has {splits['valid'].length} pixels per image")
    return splits, source


def cmd_eval_samples(cfg):
    """Generative perplexity under a judge LM, unigram entropy and (when installed) MAUVE of
    one samples file, or of several (eval.samples=[a.json,b.json]) with the judge loaded once."""
    paths = [str(p) for p in cfg.eval.samples] if not isinstance(cfg.eval.samples, str) else [cfg.eval.samples]
    if cfg.eval.output and len(paths) > 1:
        raise ValueError("eval.output names one file; with several eval.samples each result goes next to its samples")
    device = default_device()
    images = {p: read_samples(p) for p in paths}
    images = {p: r for p, r in images.items() if "image" in r}
    if images and len(images) < len(paths):
        raise ValueError("eval.samples: score image samples and text samples in separate runs")
    if images:
        return cmd_eval_image_samples(cfg, images, device)
    if "eval.image_features" in set(cfg.given):
        raise ValueError(f"eval.image_features is for image samples; {paths[0]} holds text")
    judge = None
    if cfg.eval.judge or cfg.eval.mauve_texts:
        judge = load_judge(cfg.eval.judge or "smollm2", device=device, context=cfg.eval.judge_context)
    scoring_model = None
    if cfg.eval.get("scoring_model"):
        scoring_model = load_pretrained(cfg.eval.scoring_model)
        scoring_model.backbone.to(device)
    for path in paths:
        res = score_samples_file(path, judge=cfg.eval.judge, judge_batch_size=cfg.eval.judge_batch_size,
                                 mauve_texts=cfg.eval.mauve_texts, loaded_judge=judge, device=device,
                                 scoring_model=scoring_model, scoring_time_samples=cfg.eval.time_samples)
        if scoring_model is not None:
            res["scoring_model"] = str(cfg.eval.scoring_model)
        out = cfg.eval.output or str(Path(path).with_suffix(".eval.json"))
        write_json(res, out)
        shown = {k: res[k] for k in ("algo", "steps", "gen_ppl", "entropy", "scoring_nelbo", "mauve", "judge")
                 if k in res}
        print(json.dumps(shown))
        print(f"-> {out}")
    return 0


def read_samples(path) -> dict:
    try:
        res = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"eval.samples: {path} is not a duolm samples file ({type(err).__name__})") from None
    if not isinstance(res, dict) or not isinstance(res.get("samples"), list):
        raise ValueError(f"eval.samples: {path} is not a duolm samples file (no 'samples' list; write one with "
                         f"duolm sample)")
    return res


def cmd_eval_image_samples(cfg, results: dict, device):
    """FID / IS (classifier or Inception features) and class accuracy of image samples files."""
    given = set(cfg.given)
    text_only = [k for k in ("eval.judge", "eval.mauve_texts", "eval.scoring_model", "eval.judge_context")
                 if k in given]
    if text_only:
        raise ValueError(f"{text_only[0]} scores text; these samples are images (FID / IS: eval.image_features)")
    features = cfg.eval.image_features  # checked by duolm.app.config.validate
    if features == "inception":
        check_inception(cfg.eval.inception_weights)  # before any work
    for path, res in results.items():
        source = cfg.data.source if data_given(cfg) else res.get("data")
        if source not in IMAGE_SOURCES:
            raise ValueError(f"eval.samples: {path} does not say which image data it imitates; add data=<"
                             f"{'|'.join(IMAGE_SOURCES)}>")
        scored = score_image_samples(res, source=source, cache_dir=cfg.data.get("cache_dir"),
                                     data_files=plain(cfg.data.get("data_files")) if cfg.data.get("source") == source else None,
                                     features=features, inception_weights=cfg.eval.inception_weights,
                                     fid_real=cfg.eval.fid_real, device=device, log=print)
        out = cfg.eval.output or str(Path(path).with_suffix(".eval.json"))
        write_json(scored, out)
        print(json.dumps({k: v for k, v in scored.items() if not isinstance(v, (list, dict))}))
        print(f"-> {out}")
    return 0
