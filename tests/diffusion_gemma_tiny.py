"""Tiny random DiffusionGemma folders for tests, written with transformers' save_pretrained (nothing
downloaded): mixture-of-experts text configs (transformers' DiffusionGemma layers always hold the
router and experts beside the dense MLP, so there is no dense-only config), a sliding-window and a
full-attention layer, a vision tower shrunk to one small layer (the class always builds one), and a
word-level tokenizer over the whole vocabulary."""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 300
PAD, EOS, BOS = 0, 1, 2


def tiny_config(canvas_length: int = 8, **text):
    from transformers import DiffusionGemmaConfig

    t = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=4, num_experts=4,
             top_k_experts=2, moe_intermediate_size=32, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
             layer_types=["sliding_attention", "full_attention"])
    t.update(text)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=16, position_embedding_size=16,
                  patch_size=4)
    return DiffusionGemmaConfig(text_config=t, vision_config=vision, canvas_length=canvas_length)


def tiny_model(seed: int = 0, scale: float = 1.0, **kw):
    """A random DiffusionGemmaForBlockDiffusion; `scale` multiplies the output embedding's spread
    (larger: peakier predictions, so the EB-sampler keeps tokens and rows stop early)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(**kw)).eval()
    if scale != 1.0:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(scale)
    return model


def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>"] + [f"w{i}" for i in range(3, VOCAB)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def tiny_folder(folder, seed: int = 0, scale: float = 1.0, **kw) -> Path:
    """save_pretrained of a tiny model and its tokenizer into `folder`."""
    folder = Path(folder)
    tiny_model(seed, scale, **kw).save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
