"""Pictures of image samples: a PNG grid (a row per class) and a strip of the denoising trajectory."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from duolm.data.tokenizers import load_tokenizer
from duolm.io.atomic import atomic_write


def tile(images: np.ndarray, columns: int, pad: int = 1, scale: int = 1) -> np.ndarray:
    """images (N, C, H, W) uint8 -> one picture (rows x columns cells, (H', W', C)) with `pad` pixels
    of gray between cells; each pixel drawn as a scale x scale block."""
    n, c, h, w = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=2).repeat(scale, axis=3)
        h, w = h * scale, w * scale
    rows = max(1, -(-n // columns))
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = images[i].transpose(1, 2, 0)
    return out


def upscale_for(size: int, target: int = 96) -> int:
    """An integer scale that shows small images (8 x 8 digits) at least `target` pixels wide."""
    return max(1, -(-target // size))


def class_rows(images: np.ndarray, labels) -> tuple[np.ndarray, int]:
    """Images reordered so that each class fills one row (the null label, unconditional, last):
    (images with blank cells where a class has fewer samples, columns)."""
    labels = np.asarray([-1 if v is None else v for v in labels])
    classes = sorted(set(labels.tolist()), key=lambda v: (v < 0, v))
    per = [np.flatnonzero(labels == k) for k in classes]
    columns = max(len(p) for p in per)
    blank = np.full(images.shape[1:], 255, dtype=np.uint8)
    cells = []
    for p in per:
        cells += [images[i] for i in p] + [blank] * (columns - len(p))
    return np.stack(cells), columns


def save_png(picture: np.ndarray, path) -> Path:
    """Write an (H, W, C) uint8 picture as PNG, atomically."""
    from PIL import Image

    if picture.shape[-1] == 1:
        picture = picture[..., 0]
    image = Image.fromarray(picture)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def sample_grid(images: np.ndarray, labels, path) -> Path:
    """The PNG grid of a sampling run: a row per class when labelled, else a square."""
    size = images.shape[-1]
    if any(v is not None for v in labels):
        cells, columns = class_rows(images, labels)
    else:
        cells, columns = images, int(np.ceil(np.sqrt(len(images))))
    return save_png(tile(cells, columns, scale=upscale_for(size)), path)


def trajectory_strip(frames: np.ndarray, path) -> Path:
    """frames (steps, N, C, H, W) uint8: a row per sample, x_t from left (t = 1) to right (t = 0)."""
    steps, n = frames.shape[:2]
    cells = frames.transpose(1, 0, 2, 3, 4).reshape(n * steps, *frames.shape[2:])
    return save_png(tile(cells, steps, scale=upscale_for(frames.shape[-1])), path)


def write_result_pictures(result: dict, json_path) -> dict[str, str]:
    """The PNG grid of an image result (a row per class) next to its JSON, and the trajectory strip
    when one was recorded: {'grid': path, 'trajectory': path}."""
    tok = load_tokenizer(result["image"])
    json_path = Path(json_path)
    images = tok.decode_pixels(np.asarray([s["ids"] for s in result["samples"]]))
    out = {"grid": str(sample_grid(images, [s["label"] for s in result["samples"]], json_path.with_suffix(".png")))}
    if result.get("trajectory"):
        frames = tok.decode_pixels(np.asarray(result["trajectory"]["ids"]))
        out["trajectory"] = str(trajectory_strip(frames, json_path.with_suffix(".trajectory.png")))
    return out
