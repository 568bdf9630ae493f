"""Sample quality of image models: FID and Inception Score in a feature space, and class accuracy.

    FID = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))      (Heusel et al., 2017)
    IS  = exp E_x KL(p(y | x) || p(y))                             (Salimans et al., 2016)

Two feature spaces, never mixed (every figure's key says which):

- ``inception``: Inception-v3 pool features and logits as the papers report them (torchmetrics /
  torch-fidelity), when ``torch-fidelity`` is installed and its weights file is on disk.
- ``classifier``: a small CNN that duolm trains once on the dataset's training split and caches
  (offline, seconds on a CPU for digits and MNIST): its penultimate layer for FID, its class
  probabilities for IS, and its accuracy on class-conditional samples (is a "3" a 3?).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from duolm.data.images import build_image_splits
from duolm.data.tokenizers import load_tokenizer
from duolm.errors import SettingError
from duolm.io.atomic import atomic_directory

CLASSIFIER_VERSION = 2  # part of the cache key: a changed architecture or recipe trains a new classifier
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


# --- the statistics ------------------------------------------------------------------------------

def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), covariance (D, D)) in float64, the covariance with N - 1."""
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / max(1, len(f) - 1)


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """The Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    tr((S_a S_b)^(1/2)) is computed as the sum of sqrt(eigenvalues) of the symmetric
    S_a^(1/2) S_b S_a^(1/2) (same spectrum), which avoids scipy's complex sqrtm of a
    non-symmetric product."""
    mu_a, mu_b, cov_a, cov_b = (torch.as_tensor(x, dtype=torch.float64) for x in (mu_a, mu_b, cov_a, cov_b))
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root)


def inception_score(probs: torch.Tensor, splits: int | None = None) -> tuple[float, float]:
    """(mean, std) over `splits` parts of exp(E KL(p(y|x) || p(y))), as torchmetrics computes it
    (10 parts there; None here: 10 parts of at least 100 samples, fewer for small sets, since
    p(y) of a handful of samples makes IS meaningless: one sample per part gives exactly 1)."""
    if splits is None:
        splits = max(1, min(10, len(probs) // 100))
    p = probs.double().clamp_min(1e-12)
    scores = []
    for part in p.chunk(min(splits, len(p))):
        marginal = part.mean(0, keepdim=True)
        scores.append(math.exp(float((part * (part.log() - marginal.log())).sum(1).mean())))
    scores = torch.tensor(scores, dtype=torch.float64)
    return float(scores.mean()), float(scores.std()) if len(scores) > 1 else 0.0


# --- feature spaces --------------------------------------------------------------------------------

class SmallClassifier(nn.Module):
    """A CNN for C x H x W images with pixels in [0, 1]: features (B, 64) and logits (B, classes).

    64 features, not Inception's 2,048: FID's small-sample bias grows with the dimension, and
    CPU-sized evaluations score hundreds of samples, not 50,000."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, features: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, features), nn.ReLU())
        self.head = nn.Linear(features, num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return features, self.head(features)


def _as_float(images) -> torch.Tensor:
    return torch.as_tensor(np.asarray(images), dtype=torch.float32) / 255.0


def train_classifier(train_images, train_labels, valid_images, valid_labels, num_classes: int, *, epochs: int = 8,
                     seed: int = 0, batch_size: int = 128, log=None) -> tuple[SmallClassifier, float]:
    """Fit the classifier on 8-bit images (N, C, H, W); returns it with its validation accuracy."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _as_float(train_images), torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    net = SmallClassifier(x.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for a in range(0, len(x), batch_size):
            idx = order[a:a + batch_size]
            loss = F.cross_entropy(net(x[idx])[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    accuracy = classify_accuracy(net, valid_images, valid_labels)
    if log:
        log(f"image classifier: {epochs} epochs on {len(x)} images, validation accuracy {accuracy:.3f}")
    return net, accuracy


@torch.no_grad()
def classifier_outputs(net: SmallClassifier, images, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 64), class probabilities (N, classes)) of 8-bit images."""
    feats, probs = [], []
    x = _as_float(images)
    for a in range(0, len(x), batch_size):
        f, logits = net(x[a:a + batch_size])
        feats.append(f)
        probs.append(logits.softmax(-1))
    return torch.cat(feats), torch.cat(probs)


def classify_accuracy(net, images, labels) -> float:
    _, probs = classifier_outputs(net, images)
    return float((probs.argmax(-1) == torch.as_tensor(np.asarray(labels))).double().mean())


def cached_classifier(key: str, cache_dir, train, valid, num_classes: int, log=None) -> tuple[SmallClassifier, dict]:
    """The classifier for one dataset (key: its store), trained once and kept in cache_dir.
    train / valid: (8-bit images, labels)."""
    from safetensors.torch import load_file, save_file

    directory = Path(cache_dir or "~/.cache/duolm").expanduser() / "image-classifiers" / f"{key}-v{CLASSIFIER_VERSION}"
    net = SmallClassifier(np.asarray(train[0]).shape[1], num_classes)
    if (directory / "info.json").exists():
        net.load_state_dict(load_file(directory / "model.safetensors"))
        return net.eval(), json.loads((directory / "info.json").read_text())
    net, accuracy = train_classifier(*train, *valid, num_classes, log=log)
    info = {"valid_accuracy": accuracy, "train_images": len(train[1]), "valid_images": len(valid[1])}
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(directory) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "info.json").write_text(json.dumps(info))
    return net, info


def inception_weights_path(given=None) -> Path:
    """Where the Inception-v3 weights are: eval.inception_weights, else torch hub's cache."""
    if given:
        return Path(str(given)).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def check_inception(given=None) -> Path:
    """The weights file, or one sentence on how to get it (and torch-fidelity)."""
    path = inception_weights_path(given)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise SettingError("`score_image_samples.features`=inception needs torch-fidelity (pip install torch-fidelity), "
                           "the Inception-v3 the papers' FID uses; or use `score_image_samples.features`=classifier") from None
    if not path.is_file():
        raise SettingError(f"`score_image_samples.features`=inception: no Inception-v3 weights at {path}; download "
                           f"{INCEPTION_URL} there (or set `check_inception.given`), or use "
                           f"`score_image_samples.features`=classifier")
    return path


@torch.no_grad()
def inception_outputs(images, weights: Path, batch_size: int = 64, device="cpu"):
    """(pool features (N, 2048), class probabilities (N, 1008)) of 8-bit images (gray repeated to RGB)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(weights)).to(device)
    x = torch.as_tensor(np.asarray(images), dtype=torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    feats, probs = [], []
    for a in range(0, len(x), batch_size):
        f, logits = net(x[a:a + batch_size].to(device))
        feats.append(f.cpu())
        probs.append(logits.softmax(-1).cpu())
    return torch.cat(feats), torch.cat(probs)


def image_quality(samples, sample_labels, real_images, *, features: str, classifier=None, inception_weights=None,
                  device="cpu") -> dict:
    """FID against real images, IS, and (classifier, labelled samples) class accuracy, in one
    feature space. samples / real_images: 8-bit (N, C, H, W); sample_labels: a class or None each."""
    if features == "classifier":
        fake_f, fake_p = classifier_outputs(classifier, samples)
        real_f, _ = classifier_outputs(classifier, real_images)
    else:
        fake_f, fake_p = inception_outputs(samples, inception_weights, device=device)
        real_f, _ = inception_outputs(real_images, inception_weights, device=device)
    fid = frechet_distance(*feature_statistics(fake_f), *feature_statistics(real_f))
    is_mean, is_std = inception_score(fake_p)
    out = {f"{features}_fid": fid, f"{features}_is": is_mean, f"{features}_is_std": is_std,
           "num_samples": len(fake_f), "num_real": len(real_f)}
    labelled = [i for i, v in enumerate(sample_labels) if v is not None]
    if features == "classifier" and labelled:
        pred = fake_p[labelled].argmax(-1)
        out["classifier_accuracy"] = float((pred == torch.tensor([sample_labels[i] for i in labelled])).double().mean())
    return out


def subset_indices(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """n of range(total) drawn without replacement by a seeded generator, sorted (all for None): the
    first n would do only if a split were shuffled, and MNIST's subset is sorted by class."""
    if n is None or n >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, int(n), replace=False))


def balanced_subset(split, n: int | None, seed: int = 0) -> torch.Tensor:
    """The pixel ids of n images of a split (subset_indices)."""
    if n is None or n >= len(split):
        return split.ids
    return split.ids[torch.from_numpy(subset_indices(len(split), n, seed))]


def score_image_samples(result: dict, *, source: str, cache_dir=None, data_files=None, features: str = "classifier",
                        inception_weights=None, fid_real: int | None = None, device="cpu", log=None) -> dict:
    """The quality figures of one image samples result (duolm sample's JSON), against the training
    split of `source` at the samples' gray levels (FID against the training set, as the papers)."""
    tok = load_tokenizer(result["image"])
    _, splits = build_image_splits(source, tok.levels, cache_dir, data_files)
    train, valid = splits["train"], splits["valid"]
    if train.length != tok.length:
        raise SettingError(f"`score_samples_file.path`: the samples are {tok.channels}x{tok.image_size}x{tok.image_size} images, "
                         f"data={source} has {train.length} pixels per image")
    real = tok.decode_pixels(balanced_subset(train, fid_real).numpy())
    samples = tok.decode_pixels(np.asarray([s["ids"] for s in result["samples"]]))
    labels = [s.get("label") for s in result["samples"]]
    classifier, info = None, {}
    if features == "classifier":
        key = f"{Path(train.directory).parent.name}"
        classifier, info = cached_classifier(
            key, cache_dir, (tok.decode_pixels(train.ids.numpy()), train.labels().numpy()),
            (tok.decode_pixels(valid.ids.numpy()), valid.labels().numpy()), max(10, int(train.labels().max()) + 1),
            log=log)
    weights = check_inception(inception_weights) if features == "inception" else None
    out = image_quality(samples, labels, real, features=features, classifier=classifier, inception_weights=weights,
                        device=device)
    keep = ("checkpoint", "algo", "sampler", "steps", "noise_removal", "guidance", "seed", "seconds_per_sample")
    return {**{k: result[k] for k in keep if k in result}, **out, "features": features, "data": source,
            **({"classifier_valid_accuracy": info["valid_accuracy"]} if info else {})}
