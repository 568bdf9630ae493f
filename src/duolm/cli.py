"""The `duolm` command: train, sample and eval, configured with Hydra overrides.

    duolm train algo=duo model=small data=openwebtext-split loader.batch_size=32 trainer.max_steps=1000
    duolm sample sampling.steps=8 sampling.noise_removal=greedy eval.checkpoint_path=outputs/.../model
    duolm eval eval.checkpoint_path=outputs/.../model data=wikitext2
    duolm eval eval.samples=outputs/.../samples.json eval.judge=smollm2
    duolm plot runs/*.eval.json plot.output=quality.png
    duolm config algo=mdlm           # print the composed, validated config
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

USAGE = """usage: duolm {train,sample,eval,distill,convert,plot,view,push,lm-eval,data,config} [key=value ...]

  train    train a model (default: a small Duo model on the built-in corpus, on the CPU),
           then report its validation NELBO and print samples
  sample   generate from eval.checkpoint_path (default: ${run.dir}/model)
  eval     validation NELBO / bits / perplexity of eval.checkpoint_path on data=... (also the
           zero-shot sets: data=ptb|wikitext2|wikitext103|lm1b|lambada|ag_news|pubmed|arxiv);
           with eval.samples=<samples.json>: generative perplexity (eval.judge), entropy, MAUVE;
           for image samples FID, IS and class accuracy (eval.image_features)
  distill  Discrete Consistency Distillation of the Duo model at eval.checkpoint_path (distill.*)
  convert  write eval.checkpoint_path (duolm, a run's .ckpt, the papers' .ckpt or Hugging Face
           layouts) as a duolm directory: convert.output=<dir>
  plot     draw quality against sampling steps from results files: duolm plot a.json b.json
           [plot.output=quality.png]
  lm-eval  EleutherAI's lm-evaluation-harness tasks (lm_eval.tasks=[...]) on eval.checkpoint_path
  push     upload eval.checkpoint_path to the Hugging Face Hub as hub.repo=<owner/name>, with a model card
  view     one self-contained HTML page per samples file that plays how each sample formed, step by
           step (sample with sampling.trajectory=true): duolm view samples.json
  data     build (or check) the token store of data=... for model.length and exit: run it once
           before a multi-node launch so no rank waits on tokenization
  config   print the composed config

Config groups: algo, model, data, noise, sampling, optim, trainer, loader (see `duolm config`).
"""


def _checkpoint(cfg) -> str:
    """eval.checkpoint_path, or the model the run in run.dir wrote."""
    return str(cfg.eval.checkpoint_path or Path(cfg.run.dir) / "model")


def _load_for_eval(cfg):
    """The model at eval.checkpoint_path, on the GPU when there is one. Keys given on the command line
    (cfg.given) are hints for the papers' files: algo, model.n_heads and data.tokenizer."""
    import torch

    from duolm.checkpoints import BUILTIN_PREFIX, load, looks_like_hub_id
    from duolm.methods import same_model

    path = _checkpoint(cfg)
    if not path.startswith(BUILTIN_PREFIX) and not Path(path).exists() and not looks_like_hub_id(path):
        raise FileNotFoundError(f"eval.checkpoint_path: {path} does not exist (train first, or point it at a "
                                f"duolm model directory, a run's .ckpt, or the papers' checkpoints)")
    given = set(cfg.given)
    asked_algo = "algo" in given or "algo.name" in given
    asked_tok = "data.tokenizer" in given
    pre = load(path, algo=cfg.algo.name if asked_algo else None, use_ema=cfg.eval.use_ema,
               tokenizer=cfg.data.tokenizer if asked_tok else "gpt2",
               n_heads=cfg.model.n_heads if given & {"model", "model.n_heads"} else None)
    if asked_algo and not same_model(cfg.algo.name, pre.config["algo"]["name"]):
        raise ValueError(f"{path} holds a {pre.config['algo']['name']} model, but algo={cfg.algo.name} was asked")
    have_tok = pre.config["tokenizer"].get("name", pre.config["tokenizer"].get("type"))
    if asked_tok and cfg.data.tokenizer != have_tok:
        raise ValueError(f"{path} was trained with the {have_tok!r} tokenizer "
                         f"({pre.tokenizer.vocab_size} tokens), but data.tokenizer={cfg.data.tokenizer} was asked")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pre.backbone.to(device)
    return pre, device


def cmd_train(cfg, parts, init=None):
    from duolm.training import quiet_libraries

    quiet_libraries()
    import torch

    from duolm.checkpoints import from_pretrained
    from duolm.evaluation import evaluate_nelbo
    from duolm.sampling_job import write_samples
    from duolm.training.run import load_data, perplexity_line, train

    report = train(cfg, init=init, parts=parts)
    if report.get("interrupted"):
        print(f"duolm: interrupted at step {report['steps']}; the checkpoint is {report['checkpoint']} and the model "
              f"{report.get('model_dir', '(rank 0 writes it)')}; rerun the same command to resume", file=sys.stderr)
        return 130
    if "model_dir" not in report:  # not rank 0
        return 0
    pre = from_pretrained(report["model_dir"])
    _, splits = load_data(cfg, pre.tokenizer, pre.config["length"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pre.backbone.to(device)
    unit = _unit(pre)
    ev = evaluate_nelbo(pre.method, pre.backbone, splits["valid"],
                        batch_size=cfg.eval.batch_size, time_samples=cfg.eval.time_samples,
                        max_batches=cfg.eval.max_batches, device=device, progress=True)
    print(f"\ntrained {report['steps']} steps in {report['train_seconds'] / 60:.1f} min -> {report['model_dir']}")
    bound = "exact NLL" if pre.method.process is None else "NELBO (an upper bound on the NLL)"
    print(perplexity_line(f"validation {bound}", ev, report["unigram_bits_per_token"], unit))
    res = _sample_and_print(cfg, pre, device, checkpoint=report["model_dir"])
    write_samples({**res, "validation": ev, "train": report}, Path(cfg.run.dir) / "report.json")
    from duolm.hub import METRICS_FILE

    # what a model card reports (duolm push): next to the weights, so the model folder is self-describing
    write_samples({"validation": ev, "unit": unit, "data": cfg.data.name, "sampler": res.get("sampler"),
                   "train": {k: report[k] for k in ("steps", "train_seconds", "parameters")},
                   "samples": [smp["text"] for smp in res.get("samples", [])[:3] if "text" in smp]},
                  Path(report["model_dir"]) / METRICS_FILE)
    return 0


def cmd_lm_eval(cfg, parts):
    """eval.checkpoint_path on lm-eval-harness tasks (lm_eval.tasks), through duolm's adapter."""
    import time

    from omegaconf import OmegaConf

    from duolm.sampling_job import write_samples

    c = cfg.lm_eval
    if not c.tasks:
        raise ValueError("duolm lm-eval needs lm_eval.tasks=[<task>, ...] (lm-eval's names, or YAML tasks in "
                         "lm_eval.include_path)")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError("duolm lm-eval needs the harness: pip install 'duolm[lm_eval]'") from None
    from duolm.evaluation.lm_eval_adapter import DuolmLM

    pre, device = _load_for_eval(cfg)
    from duolm.api import Model

    tasks = list(OmegaConf.to_container(c.tasks)) if not isinstance(c.tasks, str) else [c.tasks]
    if c.include_path and not Path(c.include_path).is_dir():
        raise ValueError(f"lm_eval.include_path={c.include_path} is not a folder of task YAML files")
    manager = TaskManager(include_path=c.include_path) if c.include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm_eval.tasks: {unknown[0]!r} is not a task lm-eval knows (nor one in lm_eval.include_path)")
    lm = DuolmLM(Model(pre, device=device), num_mc_samples=c.num_mc_samples, batch_size=c.batch_size, steps=c.steps)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=c.num_fewshot, limit=c.limit,
                                  task_manager=manager, log_samples=False, bootstrap_iters=1000)
    seconds = time.perf_counter() - t0
    from lm_eval.utils import make_table

    print(make_table(out))
    path = Path(c.output or Path(cfg.run.dir) / "lm_eval.json")
    write_samples({"checkpoint": str(_checkpoint(cfg)), "algo": pre.method.name, "tasks": tasks, "seconds": seconds,
                   "num_mc_samples": c.num_mc_samples, "results": out["results"]}, path)
    print(f"{len(tasks)} task(s) in {seconds:.1f} s -> {path}")
    return 0


def cmd_push(cfg, parts):
    """Upload eval.checkpoint_path to hub.repo in duolm's format, with a generated model card."""
    from duolm.hub import push

    if not cfg.eval.checkpoint_path:
        raise ValueError("duolm push needs eval.checkpoint_path=<a model> and hub.repo=<owner/name>")
    if not cfg.hub.repo:
        raise ValueError("duolm push needs hub.repo=<owner/name>, the Hugging Face repository to create or update")
    url = push(cfg.eval.checkpoint_path, cfg.hub.repo, private=cfg.hub.private, message=cfg.hub.message)
    print(f"pushed {cfg.eval.checkpoint_path} to {cfg.hub.repo}: {url}\nload it with duolm.load(\"{cfg.hub.repo}\")")
    return 0


def _sample_and_print(cfg, pre, device, checkpoint=None):
    from duolm.config import ConfigError, check_conditioning, parse_classes
    from duolm.data.tokenizers import is_image
    from duolm.sampling import check_sampler
    from duolm.sampling_job import generate, spec_from_config, write_pictures, write_samples

    s = cfg.sampling
    try:  # against the model that was loaded, not the config's algo and length
        spec = spec_from_config(s, pre.method, pre.tokenizer, eps=cfg.training.sampling_eps)
        check_sampler(spec, pre.method)
        spec.check_length(pre.config["length"])
    except ValueError as err:
        raise ConfigError(f"{err} (the model at {checkpoint or _checkpoint(cfg)} is {pre.method.name}, "
                          f"length {pre.config['length']})") from None
    image = is_image(pre.tokenizer)
    template = None
    try:
        check_conditioning(s.guidance, s.classes, pre.num_classes, score_model=pre.method.parameterization == "score")
        if s.get("infill"):
            from duolm.infill import parse_template
            from duolm.sampling_job import check_infill

            if image:
                raise ValueError("sampling.infill fills text templates; this is an image model")
            template = parse_template(s.infill, pre.tokenizer, blank_length=s.get("blank_length", 8),
                                      max_length=pre.config["length"])
            check_infill(spec, pre.method, pre.config["length"])
    except ValueError as err:
        raise ConfigError(f"{err} (the model at {checkpoint or _checkpoint(cfg)})") from None
    res = generate(pre.method, pre.backbone, pre.tokenizer, spec, length=pre.config["length"],
                   num_samples=s.num_samples, batch_size=s.batch_size, seed=s.seed, device=device,
                   classes=parse_classes(s.classes), guidance=s.guidance, trajectory=s.trajectory,
                   predictions=bool(s.get("trajectory_predictions", False)),
                   template=template)
    res = {"checkpoint": str(checkpoint or _checkpoint(cfg)), **res}
    if image:
        res["data"] = pre.config.get("data")  # which training images FID compares against
    out = s.output or str(Path(cfg.run.dir) / "samples.json")
    write_samples(res, out)
    how = (f"{spec.predictor}, {res['steps']} steps, last step {res['noise_removal']}"
           if pre.method.process is not None else "autoregressive, KV cache")
    if "cache" in res:
        how += f", {res['cache']['cached_calls']} of {res['cache']['cached_calls'] + res['cache']['denoiser_calls']} denoiser calls saved by the cache"
    print(f"\n{res['num_samples']} samples ({how}) in {res['seconds']:.2f} s = "
          f"{res['seconds_per_sample']:.3f} s/sample, {res['tokens_per_second']:.0f} tokens/s -> {out}")
    if image:
        if s.grid:
            pictures = write_pictures(res, out)
            print("pictures: " + ", ".join(pictures.values()))
        return res
    for i, smp in enumerate(res["samples"][: s.print]):
        print(f"--- sample {i}\n{smp['text']}")
    return res


def cmd_view(files) -> int:
    """duolm view samples.json [...]: one self-contained HTML page per file, next to it."""
    from duolm.evaluation.trajectory_page import write_page

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
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        print(f"wrote {out} (open it in any browser)")
    return 0


def cmd_sample(cfg, parts):
    pre, device = _load_for_eval(cfg)
    _sample_and_print(cfg, pre, device)
    return 0


def cmd_distill(cfg, parts):
    """Discrete Consistency Distillation of a trained Duo model (eval.checkpoint_path)."""
    from omegaconf import OmegaConf

    if not cfg.eval.checkpoint_path:
        raise ValueError("duolm distill needs eval.checkpoint_path=<a trained Duo model>")
    pre, _ = _load_for_eval(cfg)
    pre.backbone.cpu().train()
    OmegaConf.update(cfg, "distill.enabled", True)
    return cmd_train(cfg, parts, init=pre)


def cmd_convert(cfg, parts):
    from duolm.checkpoints import save_pretrained

    if not cfg.get("convert") or not cfg.convert.get("output"):
        raise ValueError("duolm convert needs convert.output=<directory> (and eval.checkpoint_path=<input>)")
    import torch

    pre, _ = _load_for_eval(cfg)

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if cfg.convert.get("dtype", "float32") not in dtypes:
        raise ValueError(f"convert.dtype must be one of {list(dtypes)}, got {cfg.convert.dtype!r}")
    out = save_pretrained(cfg.convert.output, pre.backbone.cpu(), algo=pre.config["algo"], noise=pre.config["noise"],
                          tokenizer=pre.tokenizer, length=pre.config["length"],
                          extra={"converted_from": str(cfg.eval.checkpoint_path)},
                          dtype=dtypes[cfg.convert.get("dtype", "float32")])
    print(f"wrote {out} ({pre.config['algo']['name']}, {pre.backbone.num_parameters() / 1e6:.2f}M parameters, "
          f"vocabulary {pre.backbone.config.vocab_size})")
    return 0


def cmd_eval(cfg, parts):
    if cfg.eval.get("samples"):
        return cmd_eval_samples(cfg)
    from duolm.data.pipeline import unigram_entropy_bits
    from duolm.evaluation import evaluate_nelbo
    from duolm.sampling_job import write_samples
    from duolm.training.run import perplexity_line

    pre, device = _load_for_eval(cfg)
    splits, data_name = _eval_splits(cfg, pre)
    ev = evaluate_nelbo(pre.method, pre.backbone, splits["valid"],
                        batch_size=cfg.eval.batch_size, time_samples=cfg.eval.time_samples,
                        max_batches=cfg.eval.max_batches, device=device, progress=True)
    base = unigram_entropy_bits(splits["valid"], pre.tokenizer.vocab_size)
    unit = _unit(pre)
    print(perplexity_line(f"{pre.method.name} on {data_name}", ev, base, unit))
    out = Path(cfg.run.dir) / "eval.json"
    write_samples({**ev, "data": data_name, "algo": pre.method.name,
                   "unigram_bits_per_token": base}, out)
    print(json.dumps(ev))
    return 0


def _unit(pre) -> str:
    """What one token of a loaded model is, for the likelihood line: a char, a pixel or a token."""
    return {"char": "char", "pixels": "pixel"}.get(pre.config["tokenizer"].get("type"), "token")


def _data_given(cfg) -> bool:
    """Whether the command line chose the data (else an image model's own data is used)."""
    return bool(set(cfg.given) & {"data", "data.source"})


def _eval_splits(cfg, pre) -> tuple[dict, str]:
    """The validation data a loaded model is scored on: data=... for text models; for image models
    the images they were trained on (or data=..., which must then be image data of their shape)."""
    from duolm.config import is_image_data
    from duolm.data.tokenizers import is_image
    from duolm.training.run import load_data

    given = _data_given(cfg)
    if not is_image(pre.tokenizer):
        if is_image_data(cfg):
            raise ValueError(f"the model at {_checkpoint(cfg)} is a text model; data={cfg.data.name} is images")
        return load_data(cfg, pre.tokenizer, pre.config["length"])[1], cfg.data.name
    from duolm.data.images import IMAGE_SOURCES, build_image_splits

    source = cfg.data.source if given else pre.config.get("data")
    if given and not is_image_data(cfg):
        raise ValueError(f"the model at {_checkpoint(cfg)} is an image model; evaluate it on image data "
                         f"(data={pre.config.get('data') or 'mnist'}), not data={cfg.data.name}")
    if source not in IMAGE_SOURCES:
        raise ValueError(f"the model at {_checkpoint(cfg)} does not say which images it was trained on; add "
                         f"data=<{'|'.join(IMAGE_SOURCES)}>")
    tok = pre.tokenizer
    splits = build_image_splits(source, tok.levels, cfg.data.get("cache_dir"),
                                cfg.data.get("data_files") if given else None, num_classes=pre.num_classes)[1]
    if splits["valid"].length != tok.length:
        raise ValueError(f"the model at {_checkpoint(cfg)} reads {tok.channels}x{tok.image_size}x{tok.image_size} "
                         f"images; data={source} has {splits['valid'].length} pixels per image")
    return splits, source


def cmd_eval_samples(cfg):
    """Generative perplexity under a judge LM, unigram entropy and (when installed) MAUVE of
    one samples file, or of several (eval.samples=[a.json,b.json]) with the judge loaded once."""
    import torch

    from duolm.evaluation.judge import load_judge
    from duolm.evaluation.samples import score_samples_file
    from duolm.sampling_job import write_samples

    paths = [str(p) for p in cfg.eval.samples] if not isinstance(cfg.eval.samples, str) else [cfg.eval.samples]
    if cfg.eval.output and len(paths) > 1:
        raise ValueError("eval.output names one file; with several eval.samples each result goes next to its samples")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = {p: _read_samples(p) for p in paths}
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
        from duolm.checkpoints import load

        scoring_model = load(cfg.eval.scoring_model)
        scoring_model.backbone.to(device)
    for path in paths:
        res = score_samples_file(path, judge=cfg.eval.judge, judge_batch_size=cfg.eval.judge_batch_size,
                                 mauve_texts=cfg.eval.mauve_texts, loaded_judge=judge, device=device,
                                 scoring_model=scoring_model, scoring_time_samples=cfg.eval.time_samples)
        if scoring_model is not None:
            res["scoring_model"] = str(cfg.eval.scoring_model)
        out = cfg.eval.output or str(Path(path).with_suffix(".eval.json"))
        write_samples(res, out)
        shown = {k: res[k] for k in ("algo", "steps", "gen_ppl", "entropy", "scoring_nelbo", "mauve", "judge")
                 if k in res}
        print(json.dumps(shown))
        print(f"-> {out}")
    return 0


def _read_samples(path) -> dict:
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
    from duolm.data.images import IMAGE_SOURCES
    from duolm.evaluation.image_metrics import check_inception, score_image_samples
    from duolm.sampling_job import write_samples

    given = set(cfg.given)
    text_only = [k for k in ("eval.judge", "eval.mauve_texts", "eval.scoring_model", "eval.judge_context")
                 if k in given]
    if text_only:
        raise ValueError(f"{text_only[0]} scores text; these samples are images (FID / IS: eval.image_features)")
    features = cfg.eval.image_features  # checked by duolm.config.validate
    if features == "inception":
        check_inception(cfg.eval.inception_weights)  # before any work
    for path, res in results.items():
        source = cfg.data.source if _data_given(cfg) else res.get("data")
        if source not in IMAGE_SOURCES:
            raise ValueError(f"eval.samples: {path} does not say which image data it imitates; add data=<"
                             f"{'|'.join(IMAGE_SOURCES)}>")
        scored = score_image_samples(res, source=source, cache_dir=cfg.data.get("cache_dir"),
                                     data_files=cfg.data.get("data_files") if cfg.data.get("source") == source else None,
                                     features=features, inception_weights=cfg.eval.inception_weights,
                                     fid_real=cfg.eval.fid_real, device=device, log=print)
        out = cfg.eval.output or str(Path(path).with_suffix(".eval.json"))
        write_samples(scored, out)
        print(json.dumps({k: v for k, v in scored.items() if not isinstance(v, (list, dict))}))
        print(f"-> {out}")
    return 0


def cmd_data(cfg, parts):
    """Build the token store of cfg.data (or map the existing one) and report it."""
    from duolm.training.run import load_data

    tokenizer, splits = load_data(cfg)
    out = {"store": str(next(iter(splits.values())).directory.parent), "tokenizer": tokenizer.to_dict(),
           "length": cfg.model.length, "blocks": cfg.data.blocks,
           "splits": {k: {"blocks": len(s), **s.meta} for k, s in splits.items()}}
    print(json.dumps(out, indent=1))
    return 0


def cmd_plot(cfg, files):
    from duolm.evaluation.plots import load_results, plot_quality_vs_steps

    if not files:
        raise ValueError("duolm plot needs results files: duolm plot a.eval.json b.eval.json [plot.output=x.png]")
    out = plot_quality_vs_steps(load_results(files), cfg.plot.output, list(cfg.plot.metrics))
    print(f"{len(files)} results -> {out}")
    return 0


# per command: (purpose, most-used keys, examples)
COMMAND_HELP = {
    "train": ("train a model on data=..., then report its validation NELBO and print samples; rerunning the "
              "same command resumes from run.dir",
              ["algo", "model", "data", "trainer.max_steps", "loader.global_batch_size", "optim.lr", "run.dir",
               "trainer.devices", "trainer.precision"],
              ["duolm train", "duolm train algo=mdlm trainer.max_steps=2000",
               "duolm train algo=duo model=small data=openwebtext-split trainer=gpu loader=papers optim=papers",
               "duolm train data=mnist model=unet-cpu algo=duo_base noise=cosine data.levels=16"]),
    "sample": ("generate from a trained model (eval.checkpoint_path, default: the model in run.dir) and write "
               "the samples as JSON",
               ["eval.checkpoint_path", "sampling.steps", "sampling.predictor", "sampling.noise_removal",
                "sampling.num_samples", "sampling.prefix", "sampling.infill", "sampling.output", "sampling.classes",
                "sampling.guidance", "sampling.trajectory"],
               ["duolm sample eval.checkpoint_path=builtin:duo-bigtxt-dcd sampling.steps=8",
                "duolm sample eval.checkpoint_path=builtin:duo-bigtxt-dcd sampling.infill='the [___] sat on the [___:3] mat'",
                "duolm sample sampling.predictor=psi sampling.psi.middle_mode=max-capped-0.02",
                "duolm sample eval.checkpoint_path=<image model> sampling.classes=[3,7] sampling.guidance=2"]),
    "eval": ("validation NELBO of a model on data=..., or with eval.samples=... the generative perplexity, "
             "entropy and MAUVE of text samples, or the FID, IS and class accuracy of image samples",
             ["eval.checkpoint_path", "data", "eval.time_samples", "eval.samples", "eval.judge",
              "eval.image_features", "eval.inception_weights", "eval.fid_real"],
             ["duolm eval eval.checkpoint_path=outputs/bigtxt-duo-demo/model eval.time_samples=4",
              "duolm eval eval.samples=s8.json eval.judge=smollm2",
              "duolm eval eval.samples=images64.json eval.image_features=classifier"]),
    "distill": ("Discrete Consistency Distillation of the Duo model at eval.checkpoint_path",
                ["eval.checkpoint_path", "distill.T", "distill.update_teacher_every", "distill.loss_type",
                 "trainer.max_steps", "run.dir"],
                ["duolm distill eval.checkpoint_path=outputs/bigtxt-duo-demo/model distill.T=512"]),
    "convert": ("write any checkpoint duolm reads as a duolm model folder",
                ["eval.checkpoint_path", "convert.output", "convert.dtype"],
                ["duolm convert eval.checkpoint_path=last.ckpt convert.output=my-model convert.dtype=float16"]),
    "data": ("build (or check) the token store of data=... for model.length, and report it",
             ["data", "data.path", "data.tokenizer", "data.num_proc", "data.cache_dir", "model.length"],
             ["duolm data data=openwebtext-split model.length=1024 data.num_proc=32"]),
    "plot": ("draw quality against sampling steps from results files", ["plot.output", "plot.metrics"],
             ["duolm plot s4.eval.json s8.eval.json plot.output=quality.png"]),
    "lm-eval": ("run lm-evaluation-harness tasks on a model (multiple-choice log-likelihoods by the NELBO with the "
                "context held clean, perplexity, generation)",
                ["eval.checkpoint_path", "lm_eval.tasks", "lm_eval.include_path", "lm_eval.num_mc_samples",
                 "lm_eval.limit", "lm_eval.num_fewshot"],
                ["duolm lm-eval eval.checkpoint_path=builtin:duo-bigtxt-dcd lm_eval.tasks=[arc_easy] lm_eval.limit=100",
                 "duolm lm-eval lm_eval.include_path=my_tasks lm_eval.tasks=[my_task] lm_eval.num_mc_samples=32"]),
    "push": ("upload a model (eval.checkpoint_path) to the Hugging Face Hub with a generated model card",
             ["eval.checkpoint_path", "hub.repo", "hub.private", "hub.message"],
             ["duolm push eval.checkpoint_path=outputs/bigtxt-duo-demo/model hub.repo=me/duo-bigtxt"]),
    "config": ("print the composed, checked config", ["any key"], ["duolm config algo=mdlm noise=cosine"]),
}


def command_help(command: str) -> str:
    from omegaconf import OmegaConf

    from duolm.config import GROUPS, compose, group_options

    purpose, keys, examples = COMMAND_HELP[command]
    cfg = compose([])
    lines = [f"usage: duolm {command} [key=value ...]", "", f"  {purpose}", "", "config groups (group=choice):"]
    lines += [f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS]
    lines += ["", "most-used keys (default):"]
    for k in keys:
        value = OmegaConf.select(cfg, k, default=None) if k != "any key" else None
        shown = k if k in GROUPS else f"{k} ({value})" if k != "any key" else k
        lines.append(f"  {shown}")
    lines += ["", "examples:", *(f"  {e}" for e in examples), "", "every key: duolm config"]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = argv[0], argv[1:]
    if command in COMMAND_HELP and any(a in ("-h", "--help") for a in overrides):
        print(command_help(command))
        return 0
    commands = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "distill": cmd_distill, "data": cmd_data,
                "convert": cmd_convert, "plot": cmd_plot, "view": cmd_view, "push": cmd_push, "lm-eval": cmd_lm_eval,
                "config": None}
    files = []
    if command == "view":  # no config: samples files in, pages out
        if any(a in ("-h", "--help") for a in overrides):
            print("usage: duolm view SAMPLES.json [...]\n\n  writes SAMPLES.html next to each file: a slider plays "
                  "x_t step by step\n  (record it with: duolm sample sampling.trajectory=true)")
            return 0
        try:
            return cmd_view(overrides)
        except ValueError as err:
            print(f"duolm: error: {err}", file=sys.stderr)
            return 1
    if command == "plot":  # bare arguments are results files
        files = [a for a in overrides if "=" not in a]
        overrides = [a for a in overrides if "=" in a]
    if command not in commands:
        print(f"duolm: unknown command {command!r}; choose one of {sorted(commands)}", file=sys.stderr)
        return 2
    from duolm.config import ConfigError, compose_components
    from duolm.training import NonFiniteLossError  # not training.module: that loads Lightning (seconds)

    try:
        cfg, parts = compose_components(overrides,
                                        model_from_checkpoint=command in ("sample", "eval", "convert", "push", "lm-eval"))
        if command == "config":
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        if command == "plot":
            return cmd_plot(cfg, files)
        return commands[command](cfg, parts)
    except ConfigError as err:
        print(f"duolm: config error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"duolm: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nduolm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error a user can cause is one sentence
        if os.environ.get("DUOLM_DEBUG"):
            raise
        print(f"duolm: error: {user_message(err)}", file=sys.stderr)
        return 1


def user_message(err: BaseException) -> str:
    """One line for an exception: its own sentence for the errors duolm raises on bad input, the
    file and the system's reason for an OSError, else the type and first line (a bug: rerun with
    DUOLM_DEBUG=1 for the traceback)."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}"
    if isinstance(err, (ValueError, FileNotFoundError, KeyError)) and err.args and isinstance(err.args[0], str) \
            and " " in err.args[0]:
        return err.args[0].splitlines()[0]
    first = (str(err).strip().splitlines() or [""])[0]
    return (f"{type(err).__name__}: {first[:300]} (this looks like a bug in duolm; rerun with DUOLM_DEBUG=1 to "
            f"see the traceback)")


if __name__ == "__main__":
    sys.exit(main())
