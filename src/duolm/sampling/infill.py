"""Infilling templates: text with blanks, turned into held positions for any diffusion sampler.

    "the [___] sat on the [___:3] mat"

A blank is ``[`` + one or more underscores + ``]``, optionally ``:n`` for its length in tokens
(default: `blank_length`). The text between blanks is tokenized piece by piece and held fixed
(with the BOS token first); the blanks, and any positions after the template up to the model's
length, are generated; only the template's span is returned, with the character span of every
filled blank marked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from duolm.data.tokenizers import encode_fragment
from duolm.errors import SettingError

BLANK = re.compile(r"\[_+(?::(\d+))?\]")


@dataclass(frozen=True)
class Piece:
    text: str | None      # held text, or None for a blank
    tokens: list[int]     # the held ids, or [] for a blank
    length: int           # number of positions


@dataclass(frozen=True)
class Template:
    source: str
    pieces: tuple[Piece, ...]
    bos_id: int

    @property
    def length(self) -> int:
        return 1 + sum(p.length for p in self.pieces)

    def held(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, values): the samplers' `fixed` argument for a window of `length` positions."""
        mask = torch.zeros(batch, length, dtype=torch.bool)
        values = torch.zeros(batch, length, dtype=torch.long)
        mask[:, 0], values[:, 0] = True, self.bos_id
        at = 1
        for p in self.pieces:
            if p.text is not None:
                mask[:, at:at + p.length] = True
                values[:, at:at + p.length] = torch.tensor(p.tokens, dtype=torch.long)
            at += p.length
        return mask, values

    def fill(self, ids: list[int], decode) -> dict:
        """{'text', 'spans': [{'start', 'end', 'text'}]} of one sample's ids (the template's positions):
        the held text as the model saw it (decoded from its tokens), each blank decoded from its
        generated tokens."""
        text, spans, at = "", [], 1
        for p in self.pieces:
            if p.text is not None:
                text += decode(p.tokens)
            else:
                filled = decode(ids[at:at + p.length])
                spans.append({"start": len(text), "end": len(text) + len(filled), "text": filled})
                text += filled
            at += p.length
        return {"text": text, "spans": spans}


def parse_template(source: str, tokenizer, *, blank_length: int = 8, max_length: int | None = None,
                   key: str = "`GenerationRequest.template`") -> Template:
    """The template's pieces; one-sentence errors name `key` (no blank, a bad length, too long): the
    library's field by default, or the caller's own name for it (the Python API says `template`)."""
    if not isinstance(blank_length, int) or isinstance(blank_length, bool) or blank_length < 1:
        raise SettingError(f"`Template.blank_length` must be an integer >= 1, got {blank_length!r}")
    pieces, at = [], 0
    for m in BLANK.finditer(source):
        if m.start() > at:
            pieces.append(_held(source[at:m.start()], tokenizer, before_blank=True))
        n = int(m.group(1)) if m.group(1) else blank_length
        if n < 1:
            raise SettingError(f"{key}: a blank needs at least one token, got {m.group(0)!r}")
        pieces.append(Piece(None, [], n))
        at = m.end()
    if at < len(source):
        pieces.append(_held(source[at:], tokenizer))
    if not any(p.text is None for p in pieces):
        raise SettingError(f"{key} has no blank to fill; mark one with [___] (or [___:n] for n tokens)")
    template = Template(source, tuple(p for p in pieces if p.length), tokenizer.bos_id)
    if max_length is not None and template.length > max_length:
        raise SettingError(f"{key} is {template.length} tokens with its blanks (and the BOS token); the model's "
                         f"length is {max_length}: shorten the template or its blanks")
    return template


def _held(text: str, tokenizer, before_blank: bool = False) -> Piece:
    if before_blank and not hasattr(tokenizer, "encode_fragment"):
        # a BPE tokenizer attaches a space to the word after it (GPT-2's " sat"): a space before a blank
        # belongs to the blank's first word, so it is left for the model to write, not held as a lone token
        text = text.rstrip(" ")
    ids = encode_fragment(tokenizer, text)  # a character tokenizer keeps the edge spaces
    return Piece(text, ids, len(ids))
