"""The `duolm` command: train, sample and eval, configured with Hydra overrides.

    duolm train algo=duo model=small data=openwebtext-split loader.batch_size=32 trainer.max_steps=1000
    duolm sample sampling.steps=8 sampling.noise_removal=greedy eval.checkpoint_path=outputs/.../model
    duolm eval eval.checkpoint_path=outputs/.../model data=wikitext2
    duolm eval eval.samples=outputs/.../samples.json eval.judge=smollm2
    duolm plot runs/*.eval.json plot.output=quality.png
    duolm config algo=mdlm           # print the composed, validated config
"""
from __future__ import annotations

import importlib
import os
import sys
import textwrap

from omegaconf import OmegaConf

from duolm.app.config import GROUPS, ConfigError, compose, compose_components, group_options
from duolm.app.fields import config_message
from duolm.errors import SettingError
from duolm.io.hub_access import HubUnreachable
from duolm.sampling.registry import options_help
from duolm.training import NonFiniteLossError, StoppedAtOnce  # not training.module: that loads Lightning (seconds)

USAGE = """usage: duolm {train,sample,eval,distill,rl,serve,convert,plot,view,push,lm-eval,data,config} [key=value ...]

  train    train a model (default: a small Duo model on the built-in corpus, on the CPU),
           then report its validation NELBO and print samples
  sample   generate from eval.checkpoint_path (default: ${run.dir}/model)
  eval     validation NELBO / bits / perplexity of eval.checkpoint_path on data=... (also the
           zero-shot sets: data=ptb|wikitext2|wikitext103|lm1b|lambada|ag_news|pubmed|arxiv);
           with eval.samples=<samples.json>: generative perplexity (eval.judge), entropy, MAUVE;
           for image samples FID, IS and class accuracy (eval.image_features)
  distill  Discrete Consistency Distillation of the Duo model at eval.checkpoint_path (distill.*)
  rl       reinforcement learning with verifiable rewards (GRPO) of eval.checkpoint_path, any method:
           data=sudoku|countdown|arithmetic or rl.prompts=<jsonl> rl.reward=<module:function> (rl.*)
  serve    an OpenAI-compatible HTTP server (completions, chat, streaming, batching) over
           eval.checkpoint_path: serve.port=8000 (serve.*)
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


# per command: (purpose, most-used keys, examples)
COMMAND_HELP = {
    "train": ("train a model on data=..., then report its validation NELBO and print samples; rerunning the "
              "same command resumes from run.dir. The end-of-run report: run.final_validation (eval.max_batches "
              "caps it) and run.final_samples (sampling.num_samples at sampling.steps); false skips either, and "
              "a run of fewer than 100 steps scores 16 batches and draws 2 samples at 16 steps unless those "
              "keys are given",
              ["algo", "model", "data", "trainer.max_steps", "trainer.max_minutes", "loader.global_batch_size",
               "optim.lr", "run.dir",
               "trainer.devices", "trainer.precision", "run.final_validation", "run.final_samples",
               "eval.max_batches", "sampling.num_samples", "sampling.steps"],
              ["duolm train", "duolm train algo=mdlm trainer.max_steps=2000",
               "duolm train algo=duo model=small data=openwebtext-split trainer=gpu loader=papers optim=papers",
               "duolm train data=mnist model=unet-cpu algo=duo_base noise=cosine data.levels=16"]),
    "sample": ("generate from a trained model (eval.checkpoint_path, default: the model in run.dir) and write "
               "the samples as JSON",
               ["eval.checkpoint_path", "sampling.steps", "sampling.predictor", "sampling.noise_removal",
                "sampling.num_samples", "sampling.prefix", "sampling.chat", "sampling.infill", "sampling.output", "sampling.classes",
                "sampling.guidance", "sampling.trajectory"],
               ["duolm sample eval.checkpoint_path=builtin:duo-bigtxt-dcd sampling.steps=8",
                "duolm sample eval.checkpoint_path=builtin:duo-bigtxt-dcd sampling.infill='the [___] sat on the [___:3] mat'",
                "duolm sample sampling.predictor=psi sampling.psi.middle_mode=max-capped-0.02",
                "duolm sample eval.checkpoint_path=<image model> sampling.classes=[3,7] sampling.guidance=2 "
                "sampling.output=images64.json"]),
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
    "rl": ("group-relative policy optimisation (GRPO) of the model at eval.checkpoint_path on prompts with verifiable "
           "rewards: a task's records and verifier (data=sudoku|countdown|arithmetic) or a JSONL of prompts with reward "
           "functions module:function; G completions per prompt with sampling.*, sequence log-probabilities exact (AR) "
           "or by the ELBO (every diffusion method) or d1's one-pass estimate (masked); a new run (default: the "
           "model's run with -rl) with checkpoints, metrics.jsonl, rl.png and the policy in model/; rerunning resumes",
           ["eval.checkpoint_path", "data", "rl.prompts", "rl.reward", "rl.steps", "rl.prompts_per_step", "rl.group",
            "rl.estimator", "rl.iterations", "rl.beta", "rl.lr", "rl.eval_every", "sampling.steps", "run.dir"],
           ["duolm rl eval.checkpoint_path=outputs/sudoku-duo/model data=sudoku rl.steps=50",
            "duolm rl eval.checkpoint_path=outputs/sums-mdlm/model rl.prompts=sums.jsonl rl.reward=my_rewards:exact_answer "
            "rl.estimator=elbo rl.elbo_samples=2 rl.iterations=2"]),
    "serve": ("an OpenAI-compatible server over the model at eval.checkpoint_path: /v1/completions, "
              "/v1/chat/completions (models with a chat template), /v1/models, /health, /metrics; concurrent requests "
              "with the same sampler settings share network calls (block and AR models continuously: rows join and "
              "leave at each block or token, each block streamed); sampling.* is the default sampler, and a request "
              "may set steps, predictor, noise_removal, top_p, temperature, confidence_threshold, block_size, "
              "stream_drafts, n, seed, stop, max_tokens",
              ["eval.checkpoint_path", "serve.host", "serve.port", "serve.max_batch_rows", "serve.continuous",
               "serve.max_queue", "serve.request_timeout", "sampling.steps", "sampling.predictor"],
              ["duolm serve eval.checkpoint_path=builtin:duo-bigtxt-dcd serve.port=8000 sampling.steps=16"]),
    "convert": ("write any checkpoint duolm reads as a duolm model folder",
                ["eval.checkpoint_path", "convert.output", "convert.dtype", "convert.merge_lora"],
                ["duolm convert eval.checkpoint_path=outputs/bigtxt-duo-demo/checkpoints/last.ckpt convert.output=my-model convert.dtype=float16"]),
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
    purpose, keys, examples = COMMAND_HELP[command]
    cfg = compose([])
    lines = [f"usage: duolm {command} [key=value ...]", "",
             textwrap.fill(purpose, 100, initial_indent="  ", subsequent_indent="  "), "", "config groups (group=choice):"]
    lines += [f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS]
    lines += ["", "most-used keys (default):"]
    for k in keys:
        value = OmegaConf.select(cfg, k, default=None) if k != "any key" else None
        shown = k if k in GROUPS else f"{k} ({value})" if k != "any key" else k
        lines.append(f"  {shown}")
    if command == "sample":
        lines += ["", "sampler settings (sampling.<predictor>.<key>: given with sampling.predictor=<predictor>):"]
        lines += [f"  {line}" for line in options_help()]
    lines += ["", "examples:", *(f"  {e}" for e in examples), "", "every key: duolm config"]
    return "\n".join(lines)


# command -> the job module (duolm.app.jobs.<module>) holding cmd_<command>. A job module is imported
# when its command runs: `train` brings Lightning (about 9 s to import), `lm-eval` the harness, `eval`
# the judge and image metrics, and no other command pays for them.
JOBS = {"train": "train", "distill": "train", "rl": "rl", "serve": "serve", "sample": "sample", "eval": "evaluate", "data": "data",
        "convert": "export", "push": "export", "lm-eval": "lm_eval", "plot": "view", "view": "view"}
# the commands that read a trained model: the sampler is checked against it once loaded
READS_A_MODEL = ("sample", "eval", "rl", "serve", "convert", "push", "lm-eval")


def job(command: str):
    """The function that runs `command` (cmd_<command> of its job module)."""
    module = importlib.import_module(f"duolm.app.jobs.{JOBS[command]}")
    return getattr(module, "cmd_" + command.replace("-", "_"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = argv[0], argv[1:]
    if command in COMMAND_HELP and any(a in ("-h", "--help") for a in overrides):
        print(command_help(command))
        return 0
    if command == "view":  # no config: samples files in, pages out
        if any(a in ("-h", "--help") for a in overrides):
            print("usage: duolm view SAMPLES.json [...]\n\n  writes SAMPLES.html next to each file: a slider plays "
                  "x_t step by step\n  (record it with: duolm sample sampling.trajectory=true)")
            return 0
        try:
            return job("view")(overrides)
        except ValueError as err:
            print(f"duolm: error: {err}", file=sys.stderr)
            return 1
    files = []
    if command == "plot":  # bare arguments are results files
        files = [a for a in overrides if "=" not in a]
        overrides = [a for a in overrides if "=" in a]
    if command not in JOBS and command != "config":
        print(f"duolm: unknown command {command!r}; choose one of {sorted([*JOBS, 'config'])}", file=sys.stderr)
        return 2
    try:
        cfg, parts = compose_components(overrides, model_from_checkpoint=command in READS_A_MODEL)
        if command == "config":
            print(OmegaConf.to_yaml(cfg))
            return 0
        if command == "plot":
            return job("plot")(cfg, files)
        return job(command)(cfg, parts)
    except ConfigError as err:
        print(f"duolm: config error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"duolm: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nduolm: interrupted", file=sys.stderr)
        return 130
    except StoppedAtOnce as err:
        print(f"\nduolm: {err}", file=sys.stderr)
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
    if isinstance(err, HubUnreachable):
        return str(err)
    if isinstance(err, SettingError):  # the library's own terms, said in config keys
        return config_message(err)
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
