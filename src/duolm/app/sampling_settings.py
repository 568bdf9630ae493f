"""The `sampling` config group as the library's sampling settings (duolm.sampling.request): the only
place the application reads sampler settings. Every check lives in the library
(request_from_settings and what it calls); this file only hands the group over as plain values."""
from __future__ import annotations

from omegaconf import OmegaConf


def sampling_settings(sampling) -> dict:
    """The group as a plain mapping (free text such as `${...}` in a prefix stays text: OmegaConf's
    escape is resolved here, once)."""
    return OmegaConf.to_container(sampling, resolve=True)
