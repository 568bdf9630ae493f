"""Groups of completions for group-relative policy optimisation: G samples per prompt, with masks.

For each prompt, `sample_groups` draws G completions with any sampler and strategy of the sampler
table (the prompt held as the spec's prefix: whole window, windows, blocks with their cache, AR),
and marks each sequence's prompt (held clean by the log-probability estimators) and completion
(the tokens after the prompt up to and including the first EOS; what follows is padding, not
scored).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from duolm.sampling.generate import sample_prompted


@dataclass
class Groups:
    sequences: torch.Tensor   # (P * G, L) ids, prompt p's group in rows p * G .. p * G + G - 1
    prompt: torch.Tensor      # (P * G, L) bool: the prompt's positions
    completion: torch.Tensor  # (P * G, L) bool: the completion's positions (up to its first EOS)
    group: int

    def completions(self) -> list[list[int]]:
        return [row[mask].tolist() for row, mask in zip(self.sequences, self.completion)]

    def texts(self, tokenizer) -> list[str]:
        """Each completion decoded, without its closing EOS."""
        return [tokenizer.decode([t for t in ids if t != tokenizer.eos_id]) for ids in self.completions()]


def completion_mask(sequences: torch.Tensor, prompt_length, eos_id: int | None) -> torch.Tensor:
    """(N, L) bool: positions from prompt_length (an int, or (N, 1) per row) on, up to and including
    the first EOS there."""
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
    """G completions of each prompt (a list of ids), sequences of `length` tokens (prompt included).

    Every prompt's group is sampled in one batch, each row holding its own prompt (whole window, AR,
    blocks; a model whose encoder reads the prompt, DiffusionGemma, left-padded as transformers pads)."""
    was_training = backbone.training
    backbone.eval()
    out = sample_prompted(method, backbone, prompts, [group] * len(prompts), length, spec, bos_id=bos_id,
                          eos_id=eos_id, generator=generator, device=device)
    starts = [len(ids) for ids in prompts for _ in range(group)]
    backbone.train(was_training)
    start = torch.as_tensor(starts, device=out.device)[:, None]
    position = torch.arange(out.shape[1], device=out.device)[None]
    prompt = position < start
    return Groups(out, prompt, completion_mask(out, start, eos_id), group)


__all__ = ["Groups", "completion_mask", "sample_groups"]
