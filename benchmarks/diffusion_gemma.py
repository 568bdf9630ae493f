"""DiffusionGemma on this machine: duolm's EB-sampler against transformers' generate(), and duolm's samplers.

    python benchmarks/diffusion_gemma.py [--out benchmarks/results/diffusion_gemma/cpu.json] [--repeats 3]

Two random DiffusionGemma configs built with transformers (no download): `tiny` (the tests' config)
and `small` (4 layers of 128, 8 experts, vocabulary 4096, canvas 32). For each:

- speed at identical outputs: generate() and duolm's canvas loop with the entropy_bound row draw
  the same tokens for the same seed (checked here, `identical`); new tokens per second of each,
  best of `repeats`, one process, one thread pool, same batch;
- where the time goes: the share of duolm's wall time inside the network's forward (encoder and
  decoder calls, timed by hooks), the rest being the sampler's own work;
- at equal decoder calls per canvas: the samples' NELBO per token under the model (the canvas
  NELBO with the linear schedule the loader assumes, 4 Monte Carlo draws) and the mean entropy of
  the generated tokens' empirical distribution, for entropy_bound, ancestral, the greedy tail
  (ancestral with greedy noise removal) and Ψ.

A random model's samples are not text; the quality columns compare samplers on the same model,
nothing more. Prints the JSON and writes it to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
try:
    from benchmarks.provenance import provenance
except ImportError:  # python benchmarks/diffusion_gemma.py
    from provenance import provenance

CONFIGS = {
    "tiny": {"text": {}, "canvas": 8},
    "small": {"text": dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, global_head_dim=32,
                           sliding_window=16, num_experts=8, top_k_experts=2, moe_intermediate_size=128,
                           layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                                        "full_attention"]),
              "canvas": 32},
}


def build(name: str, device="cpu", dtype=torch.float32):
    from diffusion_gemma_tiny import tiny_model

    from duolm.core.methods import build_method
    from duolm.core.schedules import make_schedule
    from duolm.models.diffusion_gemma import DiffusionGemma, DiffusionGemmaSettings

    c = CONFIGS[name]
    model = tiny_model(0, scale=4.0, canvas_length=c["canvas"], **c["text"]).to(device=device, dtype=dtype)
    vocab = model.config.text_config.vocab_size
    net = DiffusionGemma(DiffusionGemmaSettings(vocab_size=vocab, hf_config=model.config.to_dict(), init="random"),
                         network=model)
    method = build_method("duo", vocab, schedule=make_schedule("log-linear", 0.0), block_size=c["canvas"],
                          time_conditioning=False)
    return model, net, method, vocab, c["canvas"]


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def forward_share(net, fn) -> float:
    """The share of fn's wall time spent inside the network's encoder and decoder calls."""
    spent, starts = [0.0], {}
    mods = [net.network.model.encoder, net.network.model.decoder]
    hooks = []
    for m in mods:
        hooks.append(m.register_forward_pre_hook(lambda mod, a: starts.__setitem__(id(mod), time.perf_counter())))
        hooks.append(m.register_forward_hook(
            lambda mod, a, o: spent.__setitem__(0, spent[0] + time.perf_counter() - starts[id(mod)])))
    t0 = time.perf_counter()
    fn()
    total = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    return spent[0] / total


def speed(name: str, repeats: int, batch: int = 4, canvases: int = 2, steps: int = 16, device="cpu",
          dtype=torch.float32) -> dict:
    from transformers import EntropyBoundSamplerConfig

    from duolm.sampling.blocks import canvas_sample
    from duolm.sampling.entropy_bound import EntropyBoundOptions
    from duolm.sampling.spec import SamplerSpec

    model, net, method, vocab, C = build(name, device, dtype)
    prompt = torch.randint(3, vocab, (batch, 6), generator=torch.Generator().manual_seed(0)).to(device)
    new = canvases * C
    spec = SamplerSpec(predictor="entropy_bound", steps=steps, options=EntropyBoundOptions(bound=1.0))

    def theirs():
        torch.manual_seed(1)
        return model.generate(prompt, max_new_tokens=new, max_denoising_steps=steps, eos_token_id=None,
                              sampler_config=EntropyBoundSamplerConfig(entropy_bound=1.0)).sequences

    def ours():
        torch.manual_seed(1)
        return canvas_sample(method, net, spec, batch, 6 + new, prefix=prompt)

    theirs(), ours()  # warm-up
    t_theirs = t_ours = float("inf")
    for _ in range(repeats):  # interleaved, so a busy moment of the machine costs both alike
        t, ref = timed(theirs, 1)
        t_theirs = min(t_theirs, t)
        t, out = timed(ours, 1)
        t_ours = min(t_ours, t)
    return {"config": name, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "batch": batch,
            "new_tokens": new, "max_steps": steps, "identical": bool(torch.equal(ref, out)),
            "transformers_tokens_per_s": batch * new / t_theirs, "duolm_tokens_per_s": batch * new / t_ours,
            "duolm_over_transformers": t_theirs / t_ours,
            "network_share_transformers": forward_share(net, theirs), "network_share_duolm": forward_share(net, ours)}


def quality(name: str, calls: int = 8, batch: int = 8) -> list[dict]:
    from duolm.evaluation.likelihood import continuation_nelbo
    from duolm.sampling.blocks import canvas_sample
    from duolm.sampling.entropy_bound import EntropyBoundOptions
    from duolm.sampling.kappa import Kappa, KappaSchedule
    from duolm.sampling.psi import PsiOptions
    from duolm.sampling.spec import SamplerSpec

    model, net, method, vocab, C = build(name)
    prompt = [2, 5, 6, 7]
    half = KappaSchedule(*(Kappa("constant", 0.5),) * 3)  # Ψ: half posterior, half predictor-corrector
    rows = []
    specs = {
        "entropy_bound": SamplerSpec(predictor="entropy_bound", steps=calls,
                                     options=EntropyBoundOptions(stability_threshold=0, confidence_threshold=1e-9)),
        "ancestral": SamplerSpec(predictor="ancestral", steps=calls, noise_removal="ancestral"),
        "greedy_tail": SamplerSpec(predictor="ancestral", steps=calls - 1, noise_removal="greedy"),
        "psi": SamplerSpec(predictor="psi", steps=calls - 1, noise_removal="greedy", options=PsiOptions(kappa=half)),
    }
    for label, spec in specs.items():
        torch.manual_seed(0)
        out = canvas_sample(method, net, spec, batch, len(prompt) + C, prefix=prompt)
        pairs = [(prompt, row[len(prompt):]) for row in out.tolist()]
        scores = continuation_nelbo(method, net, pairs, length=len(prompt) + C, pad_id=0, num_samples=4, seed=0)
        gen = out[:, len(prompt):].reshape(-1)
        p = torch.bincount(gen, minlength=vocab).double() / gen.numel()
        rows.append({"config": name, "sampler": label, "decoder_calls_per_canvas": calls,
                     "nelbo_per_token": sum(s["nelbo"] for s in scores) / sum(s["tokens"] for s in scores),
                     "token_entropy_nats": float(-(p[p > 0] * p[p > 0].log()).sum())})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/diffusion_gemma/cpu.json")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    result = {**provenance(None if argv is None else ["benchmarks/diffusion_gemma.py", *argv]),
              "schedule_assumed": "alpha_t = 1 - t (log-linear, eps 0)",
              "speed": [speed(name, args.repeats) for name in CONFIGS],
              "quality": [row for name in CONFIGS for row in quality(name)]}
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
