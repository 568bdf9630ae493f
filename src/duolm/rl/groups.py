"""Groups of completions for group-relative policy optimisation: G samples per prompt, with masks.

For each prompt, `sample_groups` draws G completions with any sampler and strategy of the sampler
table (the prompt held as the spec's prefix: whole window, windows, blocks with their cache, AR),
and marks each sequence's prompt (held clean by the log-probability estimators) and completion
(the tokens after the prompt up to and including the first EOS; what follows is padding, not
scored).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from duolm.sampling.generate import sample_batch
from duolm.sampling.registry import checked_spec


@dataclass
class Groups:
    sequences: torch.Tensor   # (P * G, L) ids, prompt p's group in rows p * G .. p * G + G - 1
    prompt: torch.Tensor      # (P * G, L) bool: the prompt's positions
    completion: torch.Tensor  # (P * G, L) bool: the completion's positions (up to its first EOS)
    group: int

    def completions(self) -> list[list[int]]:
        return [row[mask].tolist() for row, mask in zip(self.sequences, self.completion)]


def completion_mask(sequences: torch.Tensor, prompt_length: int, eos_id: int | None) -> torch.Tensor:
    """(N, L) bool: positions from prompt_length on, up to and including the first EOS there."""
    N, L = sequences.shape
    after = torch.arange(L, device=sequences.device)[None].expand(N, L) >= prompt_length
    if eos_id is None:
        return after
    eos = (sequences == eos_id) & after
    before_first = torch.cumsum(eos.long(), 1) - eos.long() == 0  # no EOS earlier in the completion
    return after & before_first


@torch.no_grad()
def sample_groups(method, backbone, prompts: list[list[int]], group: int, length: int, spec, *, bos_id: int,
                  eos_id: int | None = None, generator=None, device=None) -> Groups:
    """G completions of each prompt (a list of ids), sequences of `length` tokens (prompt included)."""
    was_training = backbone.training
    backbone.eval()
    rows, prompt_masks, completion_masks = [], [], []
    for ids in prompts:
        s = checked_spec(replace(spec, prefix=tuple(ids)), method, length)
        out = sample_batch(method, backbone, s, group, length, bos_id=bos_id, eos_id=eos_id, generator=generator,
                           device=device)[:, :length]
        held = torch.zeros_like(out, dtype=torch.bool)
        held[:, :len(ids)] = True
        rows.append(out)
        prompt_masks.append(held)
        completion_masks.append(completion_mask(out, len(ids), eos_id))
    backbone.train(was_training)
    return Groups(torch.cat(rows), torch.cat(prompt_masks), torch.cat(completion_masks), group)


__all__ = ["Groups", "completion_mask", "sample_groups"]
