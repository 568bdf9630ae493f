"""Long generation: AR with its KV cache, semi-autoregressive windows, block diffusion with its cache,
and confidence decoding; prints JSON.

    python benchmarks/block_generation.py [--model tiny] [--new 2048] [--length 1024] [--out FILE]
    python benchmarks/block_generation.py --pretrained smollm2 --new 256 [--out FILE]   # model=hf's cache

Speed does not depend on the weights, so the models are untrained (`model=tiny`, GPT-2 vocabulary,
a random output layer so predictions are not uniform), batch 1, `--new` tokens each:

- AR (`algo=ar`) sampled with its KV cache, one position per call;
- MDLM over the whole window (model length `--length`) extended by semi-autoregressive windows
  (`sampling.total_length`, stride half the window), at 8 and 64 steps per window (the blocks'
  steps per block), and at length / 4 steps per window (the blocks' 0.5 steps per new token at 8
  steps per block of 16: equal work per token, the comparison that holds sample quality level);
- block diffusion (`algo=mdlm algo.block_size=16`, BD3-LM; and `duo_base` at 8 steps) sampled block
  by block with the exact cache, at 8 and 64 steps per block;
- confidence decoding inside the blocks at two thresholds (with untrained weights no token reaches
  a threshold, so the calls are the budget's: the early finish needs a trained model, measured on
  the built-in model below).

Each row: seconds, new tokens per second, denoiser calls, and token-forwards per new token (the
query positions the network processes per generated token: the cost a memory-bound GPU pays).
Then, on the built-in character model (`builtin:duo-bigtxt-dcd`, Duo, whole window of 128), the
calls that confidence decoding takes at thresholds 0.9 / 0.7 / 0.5 against ancestral sampling at
the same step budget, with the samples' character entropy and their NELBO under the model.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance

from duolm.app.config import compose_components
from duolm.models.dit import DiT
from duolm.sampling import SamplerSpec
from duolm.sampling.ar import ar_sample
from duolm.sampling.confidence import ConfidenceOptions
from duolm.sampling.generate import sample_batch


class CountedBackbone(torch.nn.Module):
    """The backbone, with its calls and the query positions it processed counted."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config = net, net.config
        self.calls = self.positions = 0

    @property
    def capabilities(self):
        return self.net.capabilities

    def new_cache(self):
        return self.net.new_cache()

    def set_step(self, step):
        self.net.set_step(step)

    def forward(self, x, *args, **kwargs):
        self.calls += 1
        self.positions += x.numel()
        return self.net(x, *args, **kwargs)


def build(model: str, algo: str, length: int, vocab: int, extra=(), device="cpu"):
    _, parts = compose_components([f"model={model}", f"algo={algo}", f"model.length={length}", "model.dropout=0.0",
                                   *extra])
    method = parts.method(vocab)
    torch.manual_seed(0)
    net = DiT(parts.backbone_config(method)).eval()
    with torch.no_grad():
        net.output_layer.linear.weight.normal_(0, 0.5)
    return method, CountedBackbone(net.to(device))


def row(name, net, new_tokens, fn, **info) -> dict:
    net.calls = net.positions = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    r = {"name": name, "seconds": s, "tokens_per_second": new_tokens / s, "network_calls": net.calls,
         "token_forwards_per_new_token": net.positions / new_tokens, **info}
    print(f"{name:42s} {s:8.2f} s  {r['tokens_per_second']:8.1f} tok/s  {net.calls:6d} calls  "
          f"{r['token_forwards_per_new_token']:7.1f} forwards/token", file=sys.stderr)
    return r


def speed(model: str, new: int, length: int, vocab: int, device: str = "cpu", block_steps=(8, 64)) -> list[dict]:
    """The speed rows (module docstring); block_steps: the steps per block (and per window) measured."""
    rows = []

    def gen():
        return torch.Generator(device=device).manual_seed(0)

    def blocks_of(method, net, spec):
        return lambda: sample_batch(method, net, spec, 1, length, bos_id=0, generator=gen(), device=device)

    method, net = build(model, "ar", new, vocab, device=device)
    ar_sample(net, 1, 8, 0, generator=gen(), device=device)  # warm-up
    rows.append(row("AR, KV cache", net, new, lambda: ar_sample(net, 1, new, 0, generator=gen(), device=device,
                                                                 vocab_size=method.vocab_size)))
    method, net = build(model, "mdlm", length, vocab, device=device)
    # the blocks' steps per block, and length // 4: their 0.5 steps per new token at 8 steps (a
    # window after the first adds length / 2 tokens; blocks of 16 at 8 steps add 16 tokens per 8 steps)
    for steps in sorted({*block_steps, length // 4}):
        spec = SamplerSpec(steps=steps, total_length=new)
        rows.append(row(f"MDLM, windows of {length}, {steps} steps", net, new, blocks_of(method, net, spec),
                        kind="windows", steps=steps))
    for algo, steps_list in (("mdlm", block_steps), ("duo_base", (8,))):
        method, net = build(model, algo, length, vocab, ["algo.block_size=16"], device=device)
        for steps in steps_list:
            spec = SamplerSpec(steps=steps, total_length=new)
            rows.append(row(f"{algo}, blocks of 16, {steps} steps, cache", net, new, blocks_of(method, net, spec),
                            kind="blocks", steps=steps, algo=algo))
        if algo == "mdlm":
            for threshold in (0.9, 0.5):
                spec = SamplerSpec(predictor="confidence", steps=8, total_length=new,
                                   options=ConfidenceOptions(threshold=threshold))
                rows.append(row(f"mdlm, blocks of 16, confidence {threshold}, budget 8", net, new,
                                blocks_of(method, net, spec), kind="confidence", steps=8, threshold=threshold))
    return rows


def confidence_on_builtin(n: int = 32) -> list[dict]:
    """Calls, character entropy and the model's own NELBO of samples from the built-in model (Duo +
    DCD on big.txt, whole window of 128 characters)."""
    import duolm
    from duolm.evaluation.samples import unigram_entropy

    m = duolm.load("builtin:duo-bigtxt-dcd", device="cpu")
    rows = []
    for steps in (16, 64):
        for name, kw in [("ancestral", {}), *[(f"confidence {t}", {"threshold": t}) for t in (0.9, 0.7, 0.5)]]:
            sampler = "ancestral" if not kw else "confidence"
            t0 = time.perf_counter()
            out = m.generate(n, sampler=sampler, steps=steps, seed=0, batch_size=n, **kw)
            s = time.perf_counter() - t0
            scores = m.nelbo(out.texts, num_mc_samples=4)
            ids = torch.tensor(out.ids)
            rows.append({"sampler": name, "steps": steps, "seconds": s,
                         "denoiser_calls_per_batch": out.result["denoiser_calls"],
                         "entropy": float(unigram_entropy(ids).mean()),
                         "nelbo_bits_per_char": sum(sc.nelbo for sc in scores) / sum(sc.tokens for sc in scores)
                         / 0.6931471805599453})
            print(rows[-1], file=sys.stderr)
    return rows


def pretrained_cache(base: str, new: int, device: str = "cpu") -> list[dict]:
    """--pretrained: a `model=hf` backbone (random weights in the base's architecture: speed does not
    depend on them) sampled block by block (MDLM, blocks of 16, 8 steps) and autoregressively, each
    with transformers' key-value cache and without it (the cache-free pass over the whole prefix)."""
    from duolm.models.hf_lm import HFLM
    from duolm.sampling.blocks import block_sample

    rows = []

    def gen():
        return torch.Generator(device=device).manual_seed(0)

    for algo, extra in (("mdlm", ["algo.block_size=16"]), ("ar", [])):
        _, parts = compose_components(["model=hf", f"model.pretrained={base}", f"data.tokenizer={base}",
                                       f"algo={algo}", "model.init=random", f"model.length={new}", *extra])
        from duolm.data.tokenizers import load_tokenizer

        method = parts.method(load_tokenizer(base).vocab_size)
        torch.manual_seed(0)
        net = CountedBackbone(HFLM(parts.backbone_config(method)).eval().to(device))
        for cache in (True, False):
            label = "cache" if cache else "no cache"
            if algo == "ar":
                fn = lambda c=cache: ar_sample(net, 1, new, 0, generator=gen(), device=device, use_cache=c,  # noqa: E731
                                               vocab_size=method.vocab_size)
                rows.append(row(f"{base} AR, {label}", net, new, fn, kind="ar", cache=cache))
            else:
                spec = SamplerSpec(steps=8)
                fn = lambda c=cache: block_sample(method, net, spec, 1, new, generator=gen(), device=device,  # noqa: E731
                                                  cache=c)
                rows.append(row(f"{base} mdlm, blocks of 16, 8 steps, {label}", net, new, fn, kind="blocks",
                                cache=cache))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--new", type=int, default=2048)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--skip-builtin", action="store_true")
    ap.add_argument("--pretrained", default=None,
                    help="time a model=hf backbone (e.g. smollm2) with and without its cache instead, --new tokens")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.pretrained:
        rows = pretrained_cache(args.pretrained, args.new)
        by = {r["name"]: r for r in rows}
        summary = {f"{k} cache speed-up": by[f"{args.pretrained} {k}, cache"]["tokens_per_second"]
                   / by[f"{args.pretrained} {k}, no cache"]["tokens_per_second"]
                   for k in ("AR", "mdlm, blocks of 16, 8 steps")}
        result = {**provenance(None if argv is None else ["benchmarks/block_generation.py", *argv]),
                  "pretrained": args.pretrained, "new_tokens": args.new, "batch": 1,
                  "threads": torch.get_num_threads(), "speed": rows, "summary": summary}
        emit(result, args.out)
        return result
    rows = speed(args.model, args.new, args.length, args.vocab)
    by = {r["name"]: r for r in rows}
    summary = {}
    for steps in (8, 64):
        w, b = by[f"MDLM, windows of {args.length}, {steps} steps"], by[f"mdlm, blocks of 16, {steps} steps, cache"]
        summary[f"blocks over windows at {steps} steps"] = b["tokens_per_second"] / w["tokens_per_second"]
        summary[f"blocks time per token over AR at {steps} steps"] = by["AR, KV cache"]["tokens_per_second"] / \
            b["tokens_per_second"]
    w = by[f"MDLM, windows of {args.length}, {args.length // 4} steps"]
    b = by["mdlm, blocks of 16, 8 steps, cache"]
    summary["blocks over windows at 0.5 steps per new token"] = b["tokens_per_second"] / w["tokens_per_second"]
    result = {**provenance(None if argv is None else ["benchmarks/block_generation.py", *argv]),
              "model": args.model, "new_tokens": args.new, "model_length": args.length, "vocab": args.vocab,
              "batch": 1, "threads": torch.get_num_threads(), "speed": rows, "summary": summary}
    if not args.skip_builtin:
        result["confidence_on_builtin"] = confidence_on_builtin()
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
