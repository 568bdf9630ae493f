"""Exponential moving average of a model's parameters, used for evaluation and sampling."""
from __future__ import annotations

import contextlib

import torch

from duolm.errors import SettingError


def check_decay(decay: float) -> None:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise SettingError(f"`EMA.decay` must lie in [0, 1), got {decay!r}")


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.9999):
        check_decay(decay)
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.num_updates += 1
        # the papers' warm-up: average fast early on, approach `decay` later
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in model.named_parameters():
            if n in self.shadow:
                s = self.shadow[n]
                if s.device != p.device:
                    self.shadow[n] = s = s.to(p.device)
                s.lerp_(p.detach().to(s.dtype), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module):
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """Run a block with the EMA weights in the model, then put the training weights back."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in backup:
                        p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict):
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks parameters: {sorted(missing)[:5]}")
        self.shadow = {n: t.clone() for n, t in state["shadow"].items()}
