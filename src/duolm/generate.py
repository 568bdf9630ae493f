"""Generate samples from a trained model with the configured sampler; time them; write them as JSON."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from duolm.sampling import ancestral_sample, ar_sample, denoiser_from


def generate(method, backbone, tokenizer, *, length: int, num_samples: int, batch_size: int, steps: int,
             noise_removal: str = "greedy", use_float64: bool = True, seed: int = 0, device=None,
             progress: bool = True) -> dict:
    backbone.eval()
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    torch.manual_seed(seed)
    out, t0 = [], time.perf_counter()
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        if method.process is None:
            x = ar_sample(backbone, b, length, tokenizer.bos_id, generator=g, device=device,
                          disable_progress=not progress)
        else:
            den = denoiser_from(method, backbone, use_float64)
            x = ancestral_sample(den, method.process, method.schedule, (b, length), steps=steps,
                                 noise_removal=noise_removal, generator=g, device=device,
                                 disable_progress=not progress)
        out.append(x.cpu())
    seconds = time.perf_counter() - t0
    ids = torch.cat(out)
    texts = [tokenizer.decode([i for i in row.tolist() if i < tokenizer.vocab_size]) for row in ids]
    return {"algo": method.name, "sampler": "ar" if method.process is None else "ancestral",
            "steps": steps if method.process is not None else length - 1, "noise_removal": noise_removal,
            "use_float64": use_float64, "seed": seed, "num_samples": num_samples, "length": length,
            "seconds": seconds, "tokens_per_second": ids.numel() / seconds,
            "seconds_per_sample": seconds / num_samples,
            "samples": [{"ids": r.tolist(), "text": t} for r, t in zip(ids, texts)]}


def write_samples(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return path
