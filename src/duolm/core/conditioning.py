"""Class conditioning: labels bound to a backbone, label dropout for classifier-free guidance.

A backbone is called as ``backbone(x, sigma, weights=None)`` by every method and sampler; a
class-conditional one also takes ``class_cond`` (B,) labels, where label ``num_classes`` is the
null label ("no class"). Binding the labels here keeps methods and samplers unaware of them.
"""
from __future__ import annotations

import torch

from duolm.errors import SettingError


class Labelled:
    """A backbone with its labels bound: called as the backbone is, with class_cond=labels; its
    capabilities are the backbone's."""

    def __init__(self, backbone, labels: torch.Tensor):
        self.backbone, self.labels = backbone, labels

    @property
    def capabilities(self):
        return self.backbone.capabilities

    def __call__(self, *args, **kwargs):
        return self.backbone(*args, class_cond=self.labels, **kwargs)


def with_labels(backbone, labels: torch.Tensor | None):
    """The backbone with its class labels bound (the backbone itself when labels is None)."""
    if labels is None:
        return backbone
    return Labelled(backbone, labels)


def num_classes_of(backbone) -> int:
    """The classes a backbone is conditioned on (0: unconditional): its config's num_classes, read
    only where its capabilities declare class conditioning."""
    return backbone.config.num_classes if backbone.capabilities.class_conditioning else 0


def null_labels(n: int, num_classes: int, device=None) -> torch.Tensor:
    """n null labels: the unconditional model of a class-conditional network."""
    return torch.full((n,), num_classes, dtype=torch.long, device=device)


def drop_labels(labels: torch.Tensor, p: float, num_classes: int, generator=None) -> torch.Tensor:
    """Each label replaced by the null label with probability p (training for guidance)."""
    if p <= 0:
        return labels
    dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(dropped, torch.full_like(labels, num_classes), labels)


def check_labels(labels, num_classes: int) -> None:
    """One sentence when labels fall outside [0, num_classes] (num_classes itself is the null label)."""
    labels = torch.as_tensor(labels)
    if num_classes == 0:
        raise SettingError("`GenerationRequest.classes`: the model is unconditional (trained without labels)")
    bad = labels[(labels < 0) | (labels > num_classes)]
    if bad.numel():
        raise SettingError(f"`GenerationRequest.classes`: label {int(bad[0])} is outside the model's classes 0..{num_classes - 1} "
                         f"({num_classes} is the null label)")
