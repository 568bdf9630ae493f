"""Generate samples from a trained model with a configured sampler; time them; write them as JSON."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from duolm.sampling.semi_ar import held_positions
from duolm.sampling import (KappaSchedule, analytic_sample, ancestral_sample, ar_sample, denoiser_from,
                            linear_constant_linear_grid, linear_grid, parse_kappa, psi_sample)


@dataclass
class SamplerSpec:
    """Everything a sampler needs besides the model; typed, built once from the config."""

    predictor: str = "ancestral"          # ancestral | ancestral_cache | psi | analytic | ar
    steps: int = 64
    noise_removal: str = "greedy"
    use_float64: bool = True
    p_nucleus: float = 1.0
    time_profile: str = "linear"          # psi: linear | linear-constant-linear
    plateau: float = 0.1
    plateau_in: str = "t"
    kappa: KappaSchedule = field(default_factory=KappaSchedule)
    prefix: list[int] | None = None       # token ids held fixed at the start
    eps: float = 1e-3
    total_length: int | None = None       # > model length: semi-autoregressive windows
    stride: int | None = None             # new tokens per window (default: half the window)
    stop_at_eos: bool = False

    def describe(self) -> dict:
        d = asdict(self)
        d["kappa"] = {k: (asdict(v) if hasattr(v, "mode") else v) for k, v in asdict(self.kappa).items()}
        return d


def spec_from_config(sampling, algo: str, tokenizer=None, eps: float = 1e-3) -> SamplerSpec:
    from duolm.config import resolve_noise_removal, resolve_predictor

    psi = sampling.psi
    prefix = None
    if sampling.get("prefix"):
        if tokenizer is None:
            raise ValueError("sampling.prefix needs the tokenizer")
        prefix = [tokenizer.bos_id] + tokenizer.encode(sampling.prefix)
    return SamplerSpec(predictor=resolve_predictor(sampling.predictor, algo), steps=sampling.steps,
                       noise_removal=resolve_noise_removal(sampling.noise_removal, algo),
                       use_float64=sampling.use_float64, p_nucleus=sampling.p_nucleus,
                       time_profile=psi.time_profile, plateau=psi.plateau, plateau_in=psi.plateau_in,
                       kappa=KappaSchedule(parse_kappa(psi.high_mode), parse_kappa(psi.middle_mode),
                                           parse_kappa(psi.low_mode), psi.high_frac, psi.middle_frac),
                       prefix=prefix, eps=eps, total_length=sampling.get("total_length"),
                       stride=sampling.get("stride"), stop_at_eos=bool(sampling.get("stop_at_eos", False)))


def _grid(spec: SamplerSpec, schedule) -> torch.Tensor:
    final_zero = spec.noise_removal != "none"
    if spec.predictor == "psi" and spec.time_profile == "linear-constant-linear":
        return linear_constant_linear_grid(spec.steps, spec.plateau, high_frac=spec.kappa.high_frac,
                                           middle_frac=spec.kappa.middle_frac, eps=spec.eps, final_zero=final_zero,
                                           schedule=schedule, plateau_in=spec.plateau_in)
    return linear_grid(spec.steps, spec.eps, final_zero=final_zero)


def sample_batch(method, backbone, spec: SamplerSpec, batch: int, length: int, *, bos_id: int, generator=None,
                 device=None, progress: bool = False, stats: dict | None = None, eos_id: int | None = None,
                 fixed=None) -> torch.Tensor:
    """One batch of samples with the sampler `spec` describes: (batch, length), or
    (batch, spec.total_length) by semi-autoregressive windows when that is longer."""
    if spec.total_length and spec.total_length > length and spec.predictor != "ar":
        from dataclasses import replace

        from duolm.sampling import semi_ar_sample

        one_window = replace(spec, total_length=None)

        def window(fx):
            return sample_batch(method, backbone, one_window, batch, length, bos_id=bos_id, generator=generator,
                                device=device, progress=progress, stats=stats, fixed=fx)

        return semi_ar_sample(window, batch, length, spec.total_length, spec.stride or length // 2,
                              prefix=spec.prefix, eos_id=eos_id, stop_at_eos=spec.stop_at_eos)
    dtype = torch.float64 if spec.use_float64 else torch.float32
    if fixed is None and spec.prefix:
        if len(spec.prefix) >= length:
            raise ValueError(f"sampling.prefix is {len(spec.prefix)} tokens; the model's length is {length}")
        fixed = held_positions(batch, length, spec.prefix)
    if spec.predictor == "ar":
        return ar_sample(backbone, batch, length, bos_id, generator=generator, device=device,
                         disable_progress=not progress, vocab_size=method.vocab_size)
    if spec.predictor == "analytic":
        return analytic_sample(denoiser_from(method, backbone, spec.use_float64), method.process, method.schedule,
                               (batch, length), steps=spec.steps, noise_removal=spec.noise_removal, eps=spec.eps,
                               generator=generator, device=device, dtype=dtype, disable_progress=not progress)
    den = denoiser_from(method, backbone, spec.use_float64)
    common = dict(p_nucleus=spec.p_nucleus, fixed=fixed, generator=generator, device=device, dtype=dtype,
                  disable_progress=not progress, stats=stats)
    if spec.predictor in ("ancestral", "ancestral_cache"):
        return ancestral_sample(den, method.process, method.schedule, (batch, length), steps=spec.steps,
                                noise_removal=spec.noise_removal, eps=spec.eps,
                                cache=spec.predictor == "ancestral_cache", **common)
    grid = _grid(spec, method.schedule)
    updates = grid[:-1] if spec.noise_removal != "none" else grid   # kappa applies to the `steps` updates
    kappas = spec.kappa.kappas(method.schedule(updates).alpha)
    if spec.noise_removal != "none":
        kappas = torch.cat([kappas, torch.ones(1, dtype=kappas.dtype)])  # the noise-removal call: posterior only
    return psi_sample(den, method.process, method.schedule, (batch, length), grid=grid, kappas=kappas,
                      noise_removal=spec.noise_removal, **common)


def generate(method, backbone, tokenizer, spec: SamplerSpec, *, length: int, num_samples: int, batch_size: int,
             seed: int = 0, device=None, progress: bool = True) -> dict:
    backbone.eval()
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    torch.manual_seed(seed)
    out, stats, t0 = [], {"denoiser_calls": 0, "cached_calls": 0}, time.perf_counter()
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        st = {}
        out.append(sample_batch(method, backbone, spec, b, length, bos_id=tokenizer.bos_id, generator=g,
                                device=device, progress=progress, stats=st, eos_id=tokenizer.eos_id).cpu())
        for k in stats:
            stats[k] += st.get(k, 0)
    seconds = time.perf_counter() - t0
    ids = torch.cat(out)
    texts = [tokenizer.decode([i for i in row.tolist() if i < tokenizer.vocab_size]) for row in ids]
    markers = sorted({tokenizer.decode([tokenizer.eos_id]), tokenizer.decode([tokenizer.bos_id])})
    return {"algo": method.name, "sampler": spec.describe(), "document_markers": markers, "steps": spec.steps if spec.predictor != "ar"
            else length - 1, "noise_removal": spec.noise_removal, "seed": seed, "num_samples": num_samples,
            "length": ids.shape[1], "seconds": seconds, "tokens_per_second": ids.numel() / seconds,
            "seconds_per_sample": seconds / num_samples, **({"cache": stats} if spec.predictor == "ancestral_cache"
                                                            else {}),
            "samples": [{"ids": r.tolist(), "text": t} for r, t in zip(ids, texts)]}


def write_samples(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return path
