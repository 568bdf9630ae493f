"""GPU readiness: the papers' model through the real training layer, then few-step sampling; prints JSON.

    python benchmarks/gpu.py                 # on CUDA: model=small, length 1024, bf16-mixed
    python benchmarks/gpu.py --smoke         # seconds on a CPU: the same path at a toy size (the tests run it)

On CUDA it trains Duo (`model=small`: 12 blocks x 768, length 1024) for --steps optimizer steps
through `duolm.app.training_run.train` (Lightning, bf16-mixed, SDPA attention) on random GPT-2 token
ids in a token store, once eagerly and once with `trainer.compile=true` (both with the chunked
loss), then eagerly with `training.fused_loss=false` as the baseline, and reports per run the
median step time after --warmup steps, tokens/s, model FLOP utilisation (6 N + 12 n_blocks H L
FLOPs per token against the device's dense bf16 peak, where known) and peak memory. (Peak memory of
the plain-loss run includes several (32, 1024, 50257) float32 tensors, 6.6 GB each.) Then it samples
8 steps (ancestral, greedy tail) from the trained Duo model at length 1024 and reports tokens/s.
Last, the Psi paper's CIFAR-10 UNet (`model=unet`, 3 x 32 x 32 pixel tokens of 256 levels, 10
classes) trains Duo for --steps steps on random labelled images at batch 128 under bf16 autocast
and samples 64 class-conditional images in 64 steps: images/s and peak memory. Then long generation
(benchmarks/block_generation.py's rows at `model=small`): AR with its KV cache against windows,
block diffusion with its exact cache and confidence decoding, tokens/s at batch 1. And SmolLM2-135M
adapted to MDLM (`model=hf`): full fine-tuning against LoRA r = 16, tokens/s and peak memory. Last, a
small random DiffusionGemma in bf16: duolm's EB-sampler against transformers' generate() at identical
outputs, tokens/s (benchmarks/diffusion_gemma.py).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance

# dense bf16 peak FLOP/s by device name (no sparsity)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


class StepTimer:
    """A Lightning callback recording the wall time of each optimizer step."""

    def __init__(self):
        self.times, self._t = [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self._t is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.perf_counter()
            self.times.append(now - self._t)
            self._t = now


def write_random_ids(path: Path, n_seqs: int, seq_len: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w") as f:
        for _ in range(n_seqs):
            f.write(" ".join(map(str, torch.randint(0, vocab - 1, (seq_len,), generator=g).tolist())) + "\n")


def timed_train(cfg, parts, args) -> tuple[dict, "StepTimer", float]:
    """A run through the real training layer with its steps timed: (its report, the timer, the
    median step time after --warmup steps); peak GPU memory counts from here."""
    import lightning.pytorch as pl

    from duolm.app.training_run import train

    timer = type("Timer", (StepTimer, pl.Callback), {})()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    report = train(cfg, parts=parts, log=lambda *_: None, callbacks=[timer])
    return report, timer, statistics.median(timer.times[args.warmup:] or timer.times)


def train_once(work: Path, args, compile_: bool, fused: bool = True) -> tuple[dict, Path]:
    from duolm.app.config import compose_components

    size = ["model.hidden_size=64", "model.cond_dim=32", "model.n_blocks=1", "model.n_heads=2"] if args.smoke \
        else ["model=small"]
    overrides = ["algo=duo_base", *size, f"model.length={args.length}", "model.dropout=0.0", "data=local",
                 f"data.path={work / 'ids.ids'}", "data.tokenizer=gpt2", f"data.cache_dir={work / 'cache'}",
                 "trainer=gpu", f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={10 * args.steps}",
                 "trainer.enable_progress_bar=false", f"trainer.compile={str(compile_).lower()}",
                 f"loader.global_batch_size={args.batch}", f"loader.num_workers={0 if args.smoke else 2}",
                 f"run.dir={work / ('run-compiled' if compile_ else 'run-eager')}", "run.resume=false",
                 f"run.checkpoint_every={10 * args.steps}", "logging.csv=false", "training.ema=0",
                 "trainer.limit_val_batches=1", "eval.max_batches=1", f"training.fused_loss={str(fused).lower()}"]
    if not fused:
        overrides = [o if not o.startswith("run.dir=") else f"run.dir={work / 'run-plain-loss'}" for o in overrides]
    if args.smoke:
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    cfg, parts = compose_components(overrides)
    report, timer, step = timed_train(cfg, parts, args)
    tokens = args.batch * args.length
    out = {"compile": compile_, "loss": "fused" if fused else "plain", "steps": report["steps"], "parameters": report["parameters"],
           "first_step_seconds": round(timer.times[0], 3), "median_step_seconds": round(step, 4),
           "tokens_per_second": round(tokens / step)}
    m = cfg.model
    flops_per_token = 6 * report["parameters"] + 12 * m.n_blocks * m.hidden_size * args.length
    out["model_tflops"] = float(f"{flops_per_token * tokens / step / 1e12:.3g}")  # 3 significant digits: a toy CPU run is ~1e-3
    if torch.cuda.is_available():
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        peak = bf16_peak(torch.cuda.get_device_name())
        out["mfu"] = round(flops_per_token * tokens / step / peak, 4) if peak else None
    return out, Path(report["model_dir"])


def adapted_once(work: Path, args, lora: bool) -> dict:
    """SmolLM2-135M adapted to MDLM (`model=hf`, offline) through the same training layer: full
    fine-tuning or LoRA r = 16; tokens/s and peak memory (random ids in SmolLM2's vocabulary)."""
    from duolm.app.config import compose_components

    ids = work / "smollm2-ids.ids"
    if not ids.exists():
        write_random_ids(ids, n_seqs=max(64, args.steps * args.batch * 2), seq_len=args.length, vocab=49152)
    name = "run-smollm2-lora" if lora else "run-smollm2-full"
    overrides = ["algo=mdlm", "model=hf", "model.pretrained=smollm2", "data.tokenizer=smollm2", f"model.length={args.length}",
                 "data=local", f"data.path={ids}", f"data.cache_dir={work / 'cache'}", "trainer=gpu",
                 f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={10 * args.steps}",
                 "trainer.enable_progress_bar=false", f"loader.global_batch_size={args.batch}",
                 f"loader.num_workers={0 if args.smoke else 2}", f"run.dir={work / name}", "run.resume=false",
                 f"run.checkpoint_every={10 * args.steps}", "logging.csv=false", "training.ema=0",
                 "trainer.limit_val_batches=1", "eval.max_batches=1"]
    if lora:
        overrides.append("model.lora.r=16")
    if args.smoke:
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    cfg, parts = compose_components(overrides)
    report, _, step = timed_train(cfg, parts, args)
    out = {"lora_r": 16 if lora else 0, "steps": report["steps"], "parameters": report["parameters"],
           "median_step_seconds": round(step, 4), "tokens_per_second": round(args.batch * args.length / step)}
    if torch.cuda.is_available():
        out["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    return out


def sample_once(model_dir: Path, args) -> dict:
    from duolm.checkpoints.loading import load_pretrained as load
    from duolm.sampling import SamplerSpec
    from duolm.sampling.generate import GenerationRequest, generate

    pre = load(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pre.backbone.to(device)
    spec = SamplerSpec(predictor="ancestral", steps=8, noise_removal="greedy")
    n = 2 if args.smoke else 32
    generate(pre.method, pre.backbone, pre.tokenizer, GenerationRequest(spec, length=args.length, num_samples=n,
             batch_size=n, seed=0), device=device, progress=False)  # warm-up
    res = generate(pre.method, pre.backbone, pre.tokenizer, GenerationRequest(spec, length=args.length, num_samples=n,
                   batch_size=n, seed=1), device=device, progress=False)
    return {"steps": 8, "samples": n, "length": args.length, "seconds": round(res["seconds"], 3),
            "tokens_per_second": round(res["tokens_per_second"])}


def unet_once(args) -> dict:
    """The papers' CIFAR-10 UNet: Duo training steps (label dropout 0.1) and class-conditional sampling."""
    from duolm.core.methods import build_method
    from duolm.core.schedules import make_schedule
    from duolm.models.backbones import build_backbone
    from duolm.sampling import SamplerSpec
    from duolm.sampling.generate import sample_batch
    from duolm.training.objectives import Nelbo

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    method = build_method("duo_base", 256, schedule=make_schedule("cosine", 1e-3))
    size, ch, batch = (8, 8, 4) if args.smoke else (32, 128, 128)
    net = build_backbone({"type": "unet", "vocab_size": 256, "channels": 3, "image_size": size, "ch": ch,
                          "num_res_blocks": 1 if args.smoke else 2, "ch_mult": [1, 2] if args.smoke else [1, 2, 2, 2],
                          "time_embed_dim": ch, "num_classes": 10}).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    objective = Nelbo(method, num_classes=10, class_dropout=0.1)
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randint(0, 256, (batch, 3 * size * size), device=device, generator=g)
    labels = torch.randint(0, 10, (batch,), device=device, generator=g)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = objective.token_loss(net, x0, None, step=step, generator=g, labels=labels).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[args.warmup:] or times)
    n = 4 if args.smoke else 64
    spec = SamplerSpec(predictor="ancestral", steps=8 if args.smoke else 64)
    net.eval()
    t0 = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
        sample_batch(method, net, spec, n, 3 * size * size, bos_id=0, device=device,
                     labels=torch.arange(n, device=device) % 10, generator=g)
    if cuda:
        torch.cuda.synchronize()
    sample_s = time.perf_counter() - t0
    return {"parameters": sum(p.numel() for p in net.parameters()), "batch": batch, "image_size": size,
            "median_step_seconds": round(step_s, 4), "train_images_per_second": round(batch / step_s, 1),
            "loss": round(loss.item(), 4), "sample_steps": spec.steps, "samples": n,
            "sample_images_per_second": round(n / sample_s, 2),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None}


def long_generation(args) -> dict:
    """benchmarks/block_generation.py's speed rows on this device at the papers' size (`model=small`,
    GPT-2 vocabulary, 2,048 new tokens from a model of length 1,024, batch 1): AR with its KV cache,
    semi-autoregressive windows, block diffusion with its exact cache, confidence decoding; 8 steps
    per block or window (and the windows at the blocks' steps per new token)."""
    try:
        from benchmarks.block_generation import speed
    except ImportError:
        from block_generation import speed
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, new, length = ("tiny", 64, 32) if args.smoke else ("small", 2048, 1024)
    rows = speed(model, new, length, 50257, device=device, block_steps=(8,))
    by = {r["name"]: r for r in rows}
    blocks, ar = by["mdlm, blocks of 16, 8 steps, cache"], by["AR, KV cache"]
    return {"model": model, "new_tokens": new, "model_length": length, "batch": 1, "rows": rows,
            "blocks time per token over AR at 8 steps": ar["tokens_per_second"] / blocks["tokens_per_second"],
            "blocks over windows at 8 steps": blocks["tokens_per_second"] /
            by[f"MDLM, windows of {length}, 8 steps"]["tokens_per_second"]}


def diffusion_gemma(args) -> dict:
    """benchmarks/diffusion_gemma.py's speed row on this device: a small random DiffusionGemma (4 layers of
    128, 8 experts, vocabulary 4096, canvas 32; the tiny one with --smoke) in bf16 on CUDA, duolm's
    EB-sampler against transformers' generate() at identical outputs (checked), batch 16."""
    try:
        from benchmarks.diffusion_gemma import speed
    except ImportError:
        from diffusion_gemma import speed
    cuda = torch.cuda.is_available()
    return speed("tiny" if args.smoke else "small", 1 if args.smoke else 5, batch=4 if args.smoke else 16,
                 canvases=1 if args.smoke else 4, device="cuda" if cuda else "cpu",
                 dtype=torch.bfloat16 if cuda else torch.float32)


def serving(model_dir: Path, work: Path, args) -> dict:
    """benchmarks/serving.py's rows on this device: `duolm serve` over the model this run trained
    (whole window) and the tiny AR and block models (continuous batching against whole batches), 32
    requests of up to 64 tokens (4 of up to 8 with --smoke) from 1, 8 and 32 clients."""
    try:
        from benchmarks.serving import WHOLE_WINDOW, measure, tiny_models
    except ImportError:
        from serving import WHOLE_WINDOW, measure, tiny_models
    requests, tokens = (4, 8) if args.smoke else (32, 64)
    models = {"the trained model (whole window)": (str(model_dir), WHOLE_WINDOW, ()), **tiny_models(work)}
    return {"requests": requests, "max_tokens": tokens, "models": measure(models, requests, tokens, 8, work)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="a toy size on the CPU, in seconds")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--length", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs CUDA (or --smoke for the CPU path)")
    args.steps = args.steps or (3 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    args.batch = args.batch or (4 if args.smoke else 32)
    args.length = args.length or (32 if args.smoke else 1024)
    result = {**provenance(None if argv is None else ["benchmarks/gpu.py", *argv]), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "smoke": args.smoke, "batch": args.batch, "length": args.length}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_random_ids(work / "ids.ids", n_seqs=max(64, args.steps * args.batch * 2), seq_len=args.length, vocab=50257)
        runs = []
        for compile_ in ([False] if args.no_compile or args.smoke else [False, True]):
            out, model_dir = train_once(work, args, compile_)
            runs.append(out)
        if not args.smoke:  # the baseline in the same run: the straightforward loss, eager
            try:
                runs.append(train_once(work, args, False, fused=False)[0])
            except torch.OutOfMemoryError:  # the (B, L, K) tensors the chunked loss avoids
                runs.append({"compile": False, "loss": "plain", "error": "out of memory"})
                torch.cuda.empty_cache()
        result["train"] = runs
        result["sample"] = sample_once(model_dir, args)
        # the adapted pretrained model (issue 24): full fine-tuning and LoRA, same steps and batch
        result["adapted"] = [adapted_once(work, args, lora) for lora in (False, True)]
        result["serving"] = serving(model_dir, work, args)
    result["unet"] = unet_once(args)
    result["long_generation"] = long_generation(args)
    result["diffusion_gemma"] = diffusion_gemma(args)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
