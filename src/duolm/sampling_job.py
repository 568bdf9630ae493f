"""A sampling job: config -> SamplerSpec -> batches through the sampler table -> timed JSON.

The samplers themselves are plain functions in duolm.sampling; this file adapts the config to
them, times them and writes what they drew.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from duolm.atomic import atomic_write_text
from duolm.data.tokenizers import is_image
from duolm.sampling import (SAMPLERS, KappaSchedule, SamplerSpec, SamplingModel, default_noise_removal, default_predictor,
                            held_positions, parse_kappa, semi_ar_sample)


def spec_from_config(sampling, method, tokenizer=None, eps: float = 1e-3) -> SamplerSpec:
    """The typed spec of the `sampling` config group for `method` ('auto' resolved per method)."""
    psi = sampling.psi
    prefix = None
    if sampling.get("prefix"):
        if tokenizer is None:
            raise ValueError("sampling.prefix needs the tokenizer")
        prefix = [tokenizer.bos_id] + tokenizer.encode(sampling.prefix)
    predictor = default_predictor(method) if sampling.predictor == "auto" else sampling.predictor
    # kappa matters to psi only: other samplers ignore it, so their specs keep the default
    kappa = KappaSchedule(parse_kappa(psi.high_mode), parse_kappa(psi.middle_mode), parse_kappa(psi.low_mode),
                          psi.high_frac, psi.middle_frac) if predictor == "psi" else KappaSchedule()
    return SamplerSpec(predictor=predictor, steps=sampling.steps,
                       noise_removal=default_noise_removal(method) if sampling.noise_removal == "auto"
                       else sampling.noise_removal,
                       use_float64=sampling.use_float64, p_nucleus=sampling.p_nucleus,
                       time_profile=psi.time_profile, plateau=psi.plateau, plateau_in=psi.plateau_in,
                       kappa=kappa, prefix=prefix, eps=eps, total_length=sampling.get("total_length"),
                       stride=sampling.get("stride"), stop_at_eos=bool(sampling.get("stop_at_eos", False)))


def sample_batch(method, backbone, spec: SamplerSpec, batch: int, length: int, *, bos_id: int, generator=None,
                 device=None, progress: bool = False, stats: dict | None = None, eos_id: int | None = None,
                 fixed=None, labels: torch.Tensor | None = None, guidance: float | None = None,
                 trajectory: list | None = None, predictions: list | None = None) -> torch.Tensor:
    """One batch of samples with the sampler `spec` names: (batch, length), or
    (batch, spec.total_length) by semi-autoregressive windows when that is longer. labels (batch,)
    and guidance: a class-conditional model's classes and guidance weight; trajectory: a list that
    receives x_t at every step (x_0 samplers); predictions: a list that receives the denoiser's
    most likely x_0 at every step (samplers that call it once per step)."""
    if spec.total_length and spec.total_length > length and spec.predictor != "ar":
        one_window = replace(spec, total_length=None)

        def window(fx):
            return sample_batch(method, backbone, one_window, batch, length, bos_id=bos_id, generator=generator,
                                device=device, progress=progress, stats=stats, fixed=fx)

        return semi_ar_sample(window, batch, length, spec.total_length, spec.stride or length // 2,
                              prefix=list(spec.prefix or []), eos_id=eos_id, stop_at_eos=spec.stop_at_eos)
    spec.check_length(length)
    if fixed is None and spec.prefix and spec.predictor != "ar":
        fixed = held_positions(batch, length, list(spec.prefix))
    model = SamplingModel.from_method(method, backbone, labels=labels, guidance=guidance)
    extra = {"trajectory": trajectory} if trajectory is not None else {}
    if trajectory is not None and SAMPLERS[spec.predictor].needs != "x0":
        raise ValueError(f"sampling.trajectory records x_t of the x_0 samplers (ancestral, psi), not "
                         f"sampling.predictor={spec.predictor}")
    if predictions is not None:
        if SAMPLERS[spec.predictor].needs != "x0" or SAMPLERS[spec.predictor].reuses_output:
            raise ValueError(f"sampling.trajectory_predictions records one prediction per step, which "
                             f"sampling.predictor={spec.predictor} does not make; use ancestral or psi")
        model = replace(model, denoiser=_recording(model.denoiser, predictions))
    return SAMPLERS[spec.predictor].run(model, spec, (batch, length), bos_id=bos_id, fixed=fixed,
                                        generator=generator, device=device, disable_progress=not progress,
                                        stats=stats, **extra)


def decode_text(tokenizer, ids: list[int]) -> str:
    """The text of sampled ids; states that are not tokens (a mask left by sampling.noise_removal=none)
    are dropped."""
    return tokenizer.decode([i for i in ids if i < tokenizer.vocab_size])


def check_infill(spec: SamplerSpec, method, length: int) -> None:
    """Infilling holds the template's text: a diffusion sampler that can hold positions, one window."""
    if method.process is None:
        raise ValueError("sampling.infill needs a diffusion model; an AR model (algo=ar) only continues text")
    if not SAMPLERS[spec.predictor].holds_positions:
        raise ValueError(f"sampling.infill holds the template's text fixed, which sampling.predictor="
                         f"{spec.predictor} cannot do; use ancestral or psi")
    if spec.prefix or (spec.total_length and spec.total_length > length):
        raise ValueError("sampling.infill fills one window of the model: drop sampling.prefix and "
                         "sampling.total_length (the template's text is the prompt)")


def _recording(denoiser, predictions: list):
    """The denoiser, appending its argmax over x_0 (B, L) to `predictions` at every call."""

    def den(x_t, alpha_t):
        out = denoiser(x_t, alpha_t)
        predictions.append(out.argmax(-1).cpu())
        return out

    return den


def sample_labels(classes, num_samples: int, num_classes: int) -> list[int | None]:
    """Each sample's class: None for an unconditional model; classes None: each class in turn;
    'none': the null label (unconditional samples of a conditional model); a list: cycled."""
    if not num_classes:
        return [None] * num_samples
    if classes is None:
        return [i % num_classes for i in range(num_samples)]
    if classes == "none":
        return [num_classes] * num_samples
    return [int(classes[i % len(classes)]) for i in range(num_samples)]


def generate(method, backbone, tokenizer, spec: SamplerSpec, *, length: int, num_samples: int, batch_size: int,
             seed: int = 0, device=None, progress: bool = True, classes=None, guidance: float | None = None,
             trajectory: int = 0, template=None, predictions: bool = False) -> dict:
    """Samples as a JSON-ready dict. Image models: classes and guidance as in sample_labels and
    guided_denoiser; trajectory > 0 (True: every step) also records x_t of the first batch at that
    many steps (duolm view plays it).
    template: a duolm.infill.Template whose text is held and whose blanks are filled; each
    sample then gives the filled template's text and the character spans generated."""
    if template is not None:
        check_infill(spec, method, length)
    backbone.eval()
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = getattr(backbone.config, "num_classes", 0)
    labels = sample_labels(classes, num_samples, num_classes)
    out, stats, t0 = [], {"denoiser_calls": 0, "cached_calls": 0}, time.perf_counter()
    frames = [] if trajectory else None
    guesses = [] if trajectory and predictions else None
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        st = {}
        batch_labels = (torch.tensor(labels[start:start + b], device=device) if num_classes else None)
        out.append(sample_batch(method, backbone, spec, b, length, bos_id=tokenizer.bos_id, generator=g,
                                device=device, progress=progress, stats=st, eos_id=tokenizer.eos_id,
                                labels=batch_labels, guidance=guidance,
                                trajectory=frames if start == 0 else None,
                                predictions=guesses if start == 0 else None,
                                fixed=None if template is None else template.held(b, length)).cpu())
        for k in stats:
            stats[k] += st.get(k, 0)
    seconds = time.perf_counter() - t0
    ids = torch.cat(out)
    if is_image(tokenizer):
        return _image_result(method, spec, tokenizer, ids, labels, num_classes, seconds, seed=seed, guidance=guidance,
                             frames=frames, trajectory=trajectory)
    if template is not None:
        samples = [{"ids": row, **template.fill(row, tokenizer.decode)} for row in ids.tolist()]
    else:
        samples = [{"ids": row, "text": decode_text(tokenizer, row)} for row in ids.tolist()]
    markers = sorted({tokenizer.decode([tokenizer.eos_id]), tokenizer.decode([tokenizer.bos_id])})
    extra = {}
    if frames:
        extra["trajectory"] = trajectory_record(frames, trajectory, guesses)
        used = sorted({i for key in ("ids", "predictions") for frame in extra["trajectory"].get(key, [])
                       if frame is not None for row in frame for i in row})
        # what each token id reads as, so a page can show the trajectory without the tokenizer
        extra["trajectory"]["tokens"] = {str(i): tokenizer.decode([i]) for i in used if i < tokenizer.vocab_size}
        extra["trajectory"]["mask_id"] = method.mask_id
    return {"algo": method.name, "sampler": spec.describe(), "document_markers": markers, "steps": spec.steps if spec.predictor != "ar"
            else length - 1, "noise_removal": spec.noise_removal, "seed": seed, "num_samples": num_samples,
            "length": ids.shape[1], "seconds": seconds, "tokens_per_second": ids.numel() / seconds,
            "seconds_per_sample": seconds / num_samples, **({"cache": stats} if spec.predictor == "ancestral_cache"
                                                            else {}),
            **({"template": template.source} if template is not None else {}), **extra, "samples": samples}


def _image_result(method, spec, tokenizer, ids, labels, num_classes, seconds, *, seed, guidance, frames,
                  trajectory) -> dict:
    res = {"algo": method.name, "sampler": spec.describe(), "steps": spec.steps, "noise_removal": spec.noise_removal,
           "seed": seed, "num_samples": len(ids), "length": ids.shape[1], "seconds": seconds,
           "tokens_per_second": ids.numel() / seconds, "seconds_per_sample": seconds / len(ids),
           "image": tokenizer.to_dict(), "guidance": None if not num_classes else (1.0 if guidance is None
                                                                                    else float(guidance)),
           "samples": [{"ids": r.tolist(), "label": None if lab is None or lab == num_classes else lab}
                       for r, lab in zip(ids, labels)]}
    if frames:
        res["trajectory"] = trajectory_record(frames, trajectory)
    return res


def trajectory_record(frames: list[torch.Tensor], wanted, predictions: list | None = None) -> dict:
    """x_t of the first (up to 8) samples at `wanted` evenly spaced frames (True: every frame; the first
    frame is the prior draw, frame k the state after step k): {'steps', 'ids': [frame][sample][position]};
    with predictions (one per step), also the most likely x_0 the denoiser saw from each kept frame
    (None at the last frame, which no step reads)."""
    count = len(frames) if wanted is True else min(int(wanted), len(frames))
    keep = torch.linspace(0, len(frames) - 1, max(count, 2)).round().long().unique().tolist()
    out = {"steps": keep, "ids": [frames[k][:8].tolist() for k in keep]}
    if predictions is not None:
        out["predictions"] = [predictions[k][:8].tolist() if k < len(predictions) else None for k in keep]
    return out


def write_pictures(result: dict, json_path) -> dict[str, str]:
    """The PNG grid of an image result (a row per class) next to its JSON, and the trajectory strip
    when one was recorded: {'grid': path, 'trajectory': path}."""
    import numpy as np

    from duolm.data.tokenizers import load_tokenizer
    from duolm.evaluation.pictures import sample_grid, trajectory_strip

    tok = load_tokenizer(result["image"])
    json_path = Path(json_path)
    images = tok.decode_pixels(np.asarray([s["ids"] for s in result["samples"]]))
    out = {"grid": str(sample_grid(images, [s["label"] for s in result["samples"]], json_path.with_suffix(".png")))}
    if result.get("trajectory"):
        frames = tok.decode_pixels(np.asarray(result["trajectory"]["ids"]))
        out["trajectory"] = str(trajectory_strip(frames, json_path.with_suffix(".trajectory.png")))
    return out


def write_samples(result: dict, path) -> Path:
    """Write a JSON result atomically (a reader never sees half a file)."""
    return atomic_write_text(path, json.dumps(result, indent=1))
