"""Generation: a SamplerSpec and a model -> batches through the sampler table -> a timed, JSON-ready result.

The samplers themselves are plain functions in duolm.sampling; this file runs one over batches
(semi-autoregressive windows past the model's length, held template positions, class labels,
a recorded trajectory), times it and describes what it drew. It takes typed objects only; the
application builds the spec from its config (duolm.app.sampling_settings).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from duolm.core.conditioning import num_classes_of
from duolm.data.tokenizers import is_image
from duolm.errors import SettingError
from duolm.sampling.blocks import block_sample, canvas_sample
from duolm.sampling.observers import NOTHING, CountsOnly, Observer, Recorder
from duolm.sampling.registry import SAMPLERS, SamplingModel, checked_spec, tempered
from duolm.sampling.semi_ar import held_positions, semi_ar_sample
from duolm.sampling.spec import SamplerSpec
from duolm.sampling.strategy import strategy_for


def sample_batch(method, backbone, spec: SamplerSpec, batch: int, length: int, *, bos_id: int, generator=None,
                 device=None, progress: bool = False, observer: Observer = NOTHING, eos_id: int | None = None,
                 fixed=None, labels: torch.Tensor | None = None, guidance: float | None = None,
                 predictions: list | None = None) -> torch.Tensor:
    """One batch of samples with the sampler `spec` names, by the strategy the method needs
    (duolm.sampling.strategy): (batch, length), or (batch, spec.total_length) past the model's
    length. labels (batch,) and guidance: a class-conditional model's classes and guidance weight;
    observer: gets every state x_t and the sampler's counts (duolm.sampling.observers); predictions:
    a list that receives the denoiser's most likely x_0 at every step (samplers that call it once
    per step)."""
    strategy = strategy_for(method, length, spec.total_length)
    if strategy == "blocks":  # block diffusion: block by block, with the cache
        prompts_only = fixed is not None and is_prefix_hold(fixed[0]) and not backbone.capabilities.encoder_prefix
        if (fixed is not None and not prompts_only) or observer.wants_states or predictions is not None:
            raise SettingError("block diffusion generates block by block: `GenerationRequest.template` and `GenerationRequest.trajectory` "
                             "need a whole-sequence model")
        # an encoder-prefix model (DiffusionGemma) reads at least the BOS before its first canvas
        prefix = spec.prefix or ([bos_id] if backbone.capabilities.encoder_prefix else None)
        return block_sample(method, backbone, spec, batch, spec.total_length or length, generator=generator,
                            device=device, progress=progress, observer=observer, eos_id=eos_id, prefix=prefix,
                            labels=labels, guidance=guidance, fixed=fixed)
    if strategy == "windows":
        one_window = replace(spec, total_length=None)

        def window(fx):
            return sample_batch(method, backbone, one_window, batch, length, bos_id=bos_id, generator=generator,
                                device=device, progress=progress, observer=CountsOnly(observer), fixed=fx)

        return semi_ar_sample(window, batch, length, spec.total_length, spec.stride or length // 2,
                              prefix=list(spec.prefix or []), eos_id=eos_id, stop_at_eos=spec.stop_at_eos)
    spec.check_length(length)
    if fixed is None and spec.prefix and strategy == "window":
        fixed = held_positions(batch, length, list(spec.prefix))
    model = tempered(SamplingModel.from_method(method, backbone, labels=labels, guidance=guidance), spec.temperature)
    if observer.wants_states and SAMPLERS[spec.predictor].needs != "x0":
        raise SettingError(f"`GenerationRequest.trajectory` records x_t of the x_0 samplers (ancestral, psi), not "
                         f"`SamplerSpec.predictor`={spec.predictor}")
    if predictions is not None:
        if SAMPLERS[spec.predictor].needs != "x0" or SAMPLERS[spec.predictor].reuses_output:
            raise SettingError(f"`GenerationRequest.predictions` records one prediction per step, which "
                             f"`SamplerSpec.predictor`={spec.predictor} does not make; use ancestral or psi")
        model = replace(model, denoiser=_recording(model.denoiser, predictions))
    return SAMPLERS[spec.predictor].run(model, spec, (batch, length), bos_id=bos_id, fixed=fixed,
                                        generator=generator, device=device, disable_progress=not progress,
                                        observer=observer)


@torch.no_grad()
def sample_prompted(method, backbone, prompts: list[list[int]], repeats: list[int], length: int, spec: SamplerSpec, *,
                    bos_id: int, eos_id: int | None = None, generator=None, device=None,
                    observer: Observer = NOTHING) -> torch.Tensor:
    """repeats[p] samples of each prompt (token ids, BOS first), (sum(repeats), length): prompt p's rows
    follow prompt p - 1's. One batch in which each row holds its own prompt (whole window, AR, blocks;
    a model whose encoder reads the prompt, DiffusionGemma, left-padded as transformers pads). The spec's
    own prefix is ignored; every prompt is checked against the model's length. A block model samples
    spec.total_length positions when it is set (past the model's length, block by block). The observer
    sees every step of a whole-window sampler (and may stop it by raising)."""
    longest = max(len(ids) for ids in prompts)
    spec = checked_spec(replace(spec, prefix=tuple(range(longest))), method, length)  # the longest prompt fits
    total, width = sum(repeats), spec.total_length or length  # blocks may run past the model's length
    if backbone.capabilities.encoder_prefix:
        return _encoder_batch(method, backbone, prompts, repeats, width, spec, eos_id=eos_id, generator=generator,
                              device=device, observer=observer)
    mask, values = prompt_rows(prompts, repeats, width)
    where = device or "cpu"
    return sample_batch(method, backbone, replace(spec, prefix=None), total, length, bos_id=bos_id, eos_id=eos_id,
                        generator=generator, device=device, fixed=(mask.to(where), values.to(where)),
                        observer=observer)[:, :width]


def prompt_rows(prompts: list[list[int]], repeats: list[int], width: int, *, left_padded: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(held mask, values), each (sum(repeats), width): repeats[p] rows holding prompt p, from position 0
    on, or ending at the last position when left_padded (the rest False / 0)."""
    mask = torch.zeros(sum(repeats), width, dtype=torch.bool)
    values = torch.zeros(sum(repeats), width, dtype=torch.long)
    row = 0
    for ids, n in zip(prompts, repeats):
        where = slice(width - len(ids), width) if left_padded else slice(0, len(ids))
        mask[row:row + n, where] = True
        values[row:row + n, where] = torch.as_tensor(ids, dtype=torch.long)
        row += n
    return mask, values


def _encoder_batch(method, backbone, prompts, repeats, width: int, spec, *, eos_id, generator, device,
                   observer) -> torch.Tensor:
    """An encoder-prefix model's (DiffusionGemma's) batch of different prompts: left-padded into one
    (B, P) prefix whose padding the encoder marks (transformers' batched generate), as many canvases as
    the shortest prompt needs; each row returned as its prompt and what follows, `width` tokens."""
    longest, shortest = max(len(p) for p in prompts), min(len(p) for p, n in zip(prompts, repeats) if n)
    total = sum(repeats)
    held, prefix = prompt_rows(prompts, repeats, longest, left_padded=True)
    pads = (~held).sum(1).tolist()
    where = device or next(backbone.parameters()).device
    out = canvas_sample(method, backbone, replace(spec, prefix=None), total, width + longest - shortest,
                        prefix=prefix.to(where), prefix_mask=held.to(where), generator=generator, device=device,
                        observer=observer, eos_id=eos_id)
    filler = eos_id if eos_id is not None else 0  # past a row's end (it stopped at its EOS)
    rows = torch.full((total, width), filler, dtype=torch.long, device=out.device)
    for r, pad in enumerate(pads):
        got = out[r, pad:pad + width]
        rows[r, :len(got)] = got
    return rows


def is_prefix_hold(mask: torch.Tensor) -> bool:
    """Whether every row of a (B, n) held mask holds a prompt: positions 0 .. k_row - 1, nothing after."""
    return bool((mask.long().cumprod(-1).bool() == mask.bool()).all())


DOCUMENT_BREAK = "\n\n"  # what an end-of-text token inside a sample reads as in its text


def documents(tokenizer, ids: list[int]) -> list[str]:
    """The documents of sampled ids: the ids split at the tokenizer's BOS/EOS markers (a model trained
    on packed windows writes them between documents), each decoded; empty pieces (the framing marker
    at a window's start or end, two markers in a row) dropped. States that are not tokens (a mask
    left by sampling.noise_removal=none) are dropped too."""
    markers = {tokenizer.bos_id, tokenizer.eos_id}
    pieces, piece = [], []
    for i in ids:
        if i in markers:
            pieces.append(piece)
            piece = []
        elif i < tokenizer.vocab_size:
            piece.append(i)
    pieces.append(piece)
    return [tokenizer.decode(p) for p in pieces if p]


def decode_text(tokenizer, ids: list[int]) -> str:
    """The text of sampled ids: no framing BOS/EOS at the ends, and an EOS inside (a document
    boundary) shown as DOCUMENT_BREAK. The ids keep every token."""
    return DOCUMENT_BREAK.join(documents(tokenizer, ids))


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


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, built once by whoever asks (the sample job from its config, the API from its
    arguments) and handed to `generate` whole.

    spec: as duolm.sampling.checked_spec returns it (infill=True with a template), which is where
    every setting, and the template's needs, are checked. length: the model's window. Image
    models: classes and guidance as in sample_labels and guided_denoiser. trajectory > 0 (True:
    every step) records x_t of the first batch at that many steps (duolm view plays it), with the
    denoiser's most likely x_0 at each when `predictions`. template: a duolm.sampling.infill.Template
    whose text is held and whose blanks are filled."""

    spec: SamplerSpec
    length: int
    num_samples: int
    batch_size: int
    seed: int = 0
    classes: object = None
    guidance: float | None = None
    trajectory: int | bool = 0
    predictions: bool = False
    template: object = None


def generate(method, backbone, tokenizer, request: GenerationRequest, *, device=None, progress: bool = True) -> dict:
    """The samples `request` asks for, as a JSON-ready dict (texts decoded, or an image model's labels;
    timing and the samplers' counts); writing it is the caller's."""
    r = request
    spec, length, num_samples, batch_size, seed = r.spec, r.length, r.num_samples, r.batch_size, r.seed
    classes, guidance, trajectory, predictions, template = r.classes, r.guidance, r.trajectory, r.predictions, \
        r.template
    backbone.eval()
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    torch.manual_seed(seed)
    num_classes = num_classes_of(backbone)
    labels = sample_labels(classes, num_samples, num_classes)
    out, stats, t0 = [], {"denoiser_calls": 0, "cached_calls": 0}, time.perf_counter()
    frames = [] if trajectory else None
    guesses = [] if trajectory and predictions else None
    for start in range(0, num_samples, batch_size):
        b = min(batch_size, num_samples - start)
        st = Recorder(states=bool(trajectory) and start == 0)
        batch_labels = (torch.tensor(labels[start:start + b], device=device) if num_classes else None)
        out.append(sample_batch(method, backbone, spec, b, length, bos_id=tokenizer.bos_id, generator=g,
                                device=device, progress=progress, observer=st, eos_id=tokenizer.eos_id,
                                labels=batch_labels, guidance=guidance,
                                predictions=guesses if start == 0 else None,
                                fixed=None if template is None else template.held(b, length)).cpu())
        if st.states is not None:
            frames = st.states
        for k in stats:
            stats[k] += st.counts.get(k, 0)
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
            "seconds_per_sample": seconds / num_samples, "denoiser_calls": stats["denoiser_calls"],
            **({"cache": stats} if spec.predictor == "ancestral_cache"
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
