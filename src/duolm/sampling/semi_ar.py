"""Semi-autoregressive generation: extend a sequence past the model's length window by window."""
from __future__ import annotations

import torch

from duolm.errors import SettingError


def held_positions(batch: int, length: int, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, values) holding `tokens` fixed at the start of every sequence, the `fixed` argument
    of the samplers."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    vals = torch.zeros(batch, length, dtype=torch.long)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    mask[:, :tokens.shape[-1]] = True
    vals[:, :tokens.shape[-1]] = tokens
    return mask, vals


def check_windows(length: int, total_length: int | None, stride: int | None) -> None:
    """Semi-autoregressive settings against the model's window `length` (None: not set)."""
    if total_length is not None and total_length < length:
        raise SettingError(f"`SamplerSpec.total_length` ({total_length}) must be >= `GenerationRequest.length` ({length})")
    if stride is not None and not 1 <= stride <= length:
        raise SettingError(f"`SamplerSpec.stride` must lie in [1, `GenerationRequest.length`={length}], got {stride}")


def semi_ar_sample(sample_window, batch: int, length: int, total_length: int, stride: int, *,
                   prefix: list[int] | None = None, eos_id: int | None = None, stop_at_eos: bool = False):
    """Generate total_length tokens with a model of window `length`.

    sample_window(fixed) -> (batch, length) samples a window with fixed = (mask, values)
    held (any sampler of this package with its `fixed` argument). Each new window keeps
    the last length - stride tokens of the previous one fixed and generates `stride` new
    tokens. With stop_at_eos, generation stops once every sequence holds an EOS after its
    first token, and everything after a sequence's first EOS is replaced by EOS.
    """
    check_windows(length, total_length, stride)
    keep = length - stride
    out = sample_window(held_positions(batch, length, prefix or [])).cpu()
    while out.shape[1] < total_length:
        if stop_at_eos and eos_id is not None and (out[:, 1:] == eos_id).any(-1).all():
            break
        window = sample_window(held_positions(batch, length, out[:, out.shape[1] - keep:])).cpu()
        out = torch.cat([out, window[:, keep:]], 1)
    out = out[:, :total_length]
    if stop_at_eos and eos_id is not None:
        out = eos_after_first(out, eos_id)
    return out


def eos_after_first(ids: torch.Tensor, eos_id: int, start: int = 1) -> torch.Tensor:
    """ids (B, L) with every position after a row's first EOS at or past `start` set to EOS (start 1:
    an EOS in the first position is a document marker, not an end)."""
    position = torch.arange(ids.shape[1], device=ids.device)
    seen = torch.cumsum((ids == eos_id) & (position >= start), 1) > 0
    after = torch.cat([torch.zeros(ids.shape[0], 1, dtype=torch.bool, device=ids.device), seen[:, :-1]], 1)
    return torch.where(after, torch.full_like(ids, eos_id), ids)
