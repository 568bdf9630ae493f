"""Why masked diffusion's image samples get worse with more steps: pixel statistics of the samples
and each masked model's denoising loss against the mask rate; prints JSON.

    python -m benchmarks.image_diagnostics [--work ~/.cache/duolm/bench-images/full] [--out FILE.json]

Reads what `python -m benchmarks.images` left in its work folder (runs/<model>/model and
samples/<setting>.json). For every sample set and for the real held-out images: the share of pixels
at each gray level (black, white, the levels between) and the share of lone pixels (a non-black
pixel whose four neighbours are all black: the speckle). For each MDLM model: the cross-entropy of
the masked pixels (bits per masked pixel) when a given fraction of an image is masked, on the
held-out images with their true labels, so the two mask encodings (the papers' gray level and
model.mask_input=embedding) can be compared where the sampler starts (almost all masked) and where
it ends (almost none).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

try:
    from benchmarks.provenance import emit, provenance
except ImportError:  # run as `python benchmarks/<script>.py`: this folder is on the path, the repository is not
    from provenance import emit, provenance

MASK_RATES = (0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def pixel_statistics(images: torch.Tensor, levels: int) -> dict:
    """images: (N, H, W) gray levels 0 .. levels-1."""
    x = images.long()
    on = x > 0
    padded = torch.nn.functional.pad(on.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    lone = on & (neighbours == 0)
    total = x.numel()
    return {"black": float((x == 0).sum() / total), "white": float((x == levels - 1).sum() / total),
            "between": float(((x > 0) & (x < levels - 1)).sum() / total),
            "mean_level": float(x.float().mean() / (levels - 1)),
            "lone_pixels_per_image": float(lone.sum() / x.shape[0]),
            "lone_share_of_lit": float(lone.sum() / on.sum().clamp_min(1))}


def masked_cross_entropy(pre, ids: torch.Tensor, labels: torch.Tensor, rate: float, seed: int = 0) -> float:
    """Bits per masked pixel of an MDLM model when `rate` of each image's pixels are masked."""
    from duolm.core.conditioning import with_labels

    g = torch.Generator().manual_seed(seed)
    method, net = pre.method, pre.backbone
    net.eval()
    masked = torch.rand(ids.shape, generator=g) < rate
    if rate >= 1.0:
        masked[:] = True
    x_t = torch.where(masked, torch.full_like(ids, method.mask_id), ids)
    alpha = torch.full((ids.shape[0],), 1.0 - rate, dtype=torch.float64).clamp_min(1e-4)
    total, count = 0.0, 0
    with torch.no_grad():
        for a in range(0, ids.shape[0], 100):
            sl = slice(a, a + 100)
            logp = method.denoise(with_labels(net, labels[sl]), x_t[sl], alpha[sl])  # (B, L, V)
            picked = logp.gather(-1, ids[sl].unsqueeze(-1)).squeeze(-1)
            total += float(-(picked * masked[sl]).sum())
            count += int(masked[sl].sum())
    return total / max(count, 1) / math.log(2)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(Path("~/.cache/duolm/bench-images/full").expanduser()))
    ap.add_argument("--images", type=int, default=500, help="held-out images for the loss against the mask rate")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from duolm.checkpoints.loading import from_pretrained
    from duolm.data.images import build_image_splits
    from duolm.training import quiet_libraries

    quiet_libraries()
    work = Path(args.work)
    models = {p.parent.name: from_pretrained(p) for p in sorted(work.glob("runs/*/model"))}
    if not models:
        raise SystemExit(f"{work}: no runs/*/model (run python -m benchmarks.images first)")
    any_pre = next(iter(models.values()))
    tok = any_pre.tokenizer
    side = int(round(math.sqrt(any_pre.config["length"])))
    sample_files = sorted(work.glob("samples/*.json"))
    data = json.loads(sample_files[0].read_text()).get("data", "mnist") if sample_files else "mnist"
    _, splits = build_image_splits(data, tok.levels, work / "cache")
    n = min(args.images, len(splits["valid"]))
    ids, labels = splits["valid"].ids[:n].long(), splits["valid"].labels()[:n]
    result = {**provenance(None if argv is None else ["-m", "benchmarks.image_diagnostics", *argv]),
              "work": str(work), "data": data, "levels": tok.levels,
              "real_validation": pixel_statistics(ids.reshape(-1, side, side), tok.levels), "samples": {},
              "masked_cross_entropy_bits": {}}
    for f in sample_files:
        res = json.loads(f.read_text())
        x = torch.tensor([s["ids"] for s in res["samples"]])
        result["samples"][f.stem] = pixel_statistics(x.reshape(-1, side, side), tok.levels)
    for name, pre in models.items():
        if pre.method.mask_id is None:
            continue
        result["masked_cross_entropy_bits"][name] = {str(r): masked_cross_entropy(pre, ids, labels, r)
                                                     for r in MASK_RATES}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
