"""The diffusion transformer (DiT) of the MDLM / SEDD / Duo papers, in plain PyTorch.

It computes what the papers' DIT computes, parameter for parameter, so their
checkpoints load by name (tests/test_dit.py checks the published logits):
adaLN-modulated pre-norm blocks conditioned on sigma, rotary position
embeddings (non-interleaved halves), untied input / output embeddings, and a
causal variant without conditioning for AR. Attention goes through
scaled_dot_product_attention, so it runs wherever PyTorch runs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from duolm.contracts import Capabilities, CapabilityError
from duolm.errors import SettingError
from duolm.models.ragged import common_padding, join_rows


@dataclass
class DiTConfig:
    vocab_size: int
    hidden_size: int = 768
    cond_dim: int = 128
    n_blocks: int = 12
    n_heads: int = 12
    dropout: float = 0.1
    causal: bool = False  # AR: causal attention, no time conditioning
    num_classes: int = 0  # > 0: class-conditional (a label embedding added to the time embedding)
    type: str = "dit"     # the backbone table's key (duolm.models.backbones)

    def __post_init__(self):
        for key in ("vocab_size", "hidden_size", "cond_dim", "n_blocks", "n_heads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"`DiTConfig.{key}` must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.n_heads:
            raise SettingError(f"`DiTConfig.hidden_size` ({self.hidden_size}) must be divisible by "
                             f"`DiTConfig.n_heads` ({self.n_heads})")
        if (self.hidden_size // self.n_heads) % 2:
            raise SettingError("`DiTConfig.hidden_size` / `DiTConfig.n_heads` must be even (rotary embeddings rotate pairs)")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingError(f"`DiTConfig.dropout` must lie in [0, 1), got {self.dropout}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise SettingError(f"`DiTConfig.num_classes` must be an integer >= 0, got {self.num_classes!r}")
        if self.num_classes and self.causal:
            raise SettingError("class conditioning needs a diffusion model; `Method.name`=ar is unconditional here")

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNorm(nn.Module):
    """Scale-only LayerNorm, always normalised in float32 (the papers' choice under bf16)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [self.dim])
        return x * self.weight[None, None, :]


def per_position(m: torch.Tensor) -> torch.Tensor:
    """A modulation (B, D) shared by every position, or one per position (B, S, D), as (B, S or 1, D)."""
    return m[:, None] if m.dim() == 2 else m


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        # not persistent: it is a function of the shape, and old checkpoints carry it anyway
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.arange(seq_len, device=device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)  # (S, D/2)
        return freqs.cos(), freqs.sin()


def apply_rotary(x, cos, sin):
    """Rotate the two halves of the head dim: x (B, S, nh, D), cos / sin (S, D/2), or (B, S, D/2) with
    positions of each row's own (rows that start at different cache slots)."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos = (cos[None] if cos.dim() == 2 else cos)[:, :, None, :].to(x.dtype)
    sin = (sin[None] if sin.dim() == 2 else sin)[:, :, None, :].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of sigma (cos then sin, 256 of them) followed by a 2-layer MLP."""

    def __init__(self, cond_dim: int, frequency_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_size, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.frequency_size = frequency_size

    def forward(self, sigma):
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = sigma[..., None].float() * freqs  # (B, F) or, per token, (B, S, F)
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # float32 features; a float64 copy stays float64


class DiTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, cond_dim: int | None, dropout: float, causal: bool):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        if cond_dim is not None:
            # zero-initialised: every block starts as the identity plus a plain residual
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, rotary, c=None, cache=None, layer: int = 0, attn_mask=None, store: bool = True):
        """attn_mask: (S, S_keys) or (B, 1, S, S_keys) bool, True = may attend (block diffusion's masks,
        rows with their own starts); cache: a KVCache
        whose entry `layer` holds the keys and values of earlier calls, extended by this call's (kept
        only when store)."""
        B, S, H = x.shape
        adaln = c is not None
        if adaln:
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = per_position(self.adaLN_modulation(c)).chunk(6, dim=2)
        h = self.norm1(x)
        if adaln:
            h = modulate(h, shift_a, scale_a)
        qkv = self.attn_qkv(h).view(B, S, 3, self.n_heads, H // self.n_heads)  # (B, S, 3, nh, hd)
        cos, sin = rotary
        q = apply_rotary(qkv[:, :, 0], cos, sin)
        k = apply_rotary(qkv[:, :, 1], cos, sin)
        v = qkv[:, :, 2]
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, nh, S, hd)
        if cache is not None:
            k, v = cache.append(k, v, layer, keep=store)
        causal = self.causal and q.shape[2] > 1 and cache is None
        if attn_mask is not None:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        elif self.causal and cache is not None and q.shape[2] > 1:
            # a prompt appended to a cache: mask future positions of the new chunk only
            L_all = k.shape[2]
            mask = torch.ones(q.shape[2], L_all, dtype=torch.bool, device=x.device).tril(L_all - q.shape[2])
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        attn = attn.transpose(1, 2).reshape(B, S, H)
        a = F.dropout(self.attn_out(attn), self.dropout, self.training)
        x = x + (gate_a * a if adaln else a)
        h = self.norm2(x)
        if adaln:
            h = modulate(h, shift_m, scale_m)
        m = F.dropout(self.mlp(h), self.dropout, self.training)
        return x + (gate_m * m if adaln else m)


class EmbeddingLayer(nn.Module):
    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, x, weights=None):
        if weights is not None:
            # weighted bag of token ids (the efficient curriculum): x (B, L, k) ids, weights (B, L, k)
            B, L, k = x.shape
            table = self.embedding if self.embedding.dtype == torch.float64 else self.embedding.float()
            out = F.embedding_bag(x.reshape(-1, k), table, per_sample_weights=weights.reshape(-1, k).to(table.dtype),
                                  mode="sum")
            return out.view(B, L, -1)
        if x.dtype in (torch.int64, torch.int32):
            return self.embedding[x]
        # soft input (the original curriculum): logits (B, L, V), softmax-weighted embedding
        if self.embedding.dtype == torch.float64:  # a float64 copy (the tests' exact comparisons)
            return torch.einsum("blv,vh->blh", x.double().softmax(-1), self.embedding)
        return torch.einsum("blv,vh->blh", x.float().softmax(-1), self.embedding.float()).to(x.dtype)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int, cond_dim: int | None):
        super().__init__()
        self.norm_final = LayerNorm(dim)
        self.linear = nn.Linear(dim, out)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        if cond_dim is not None:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
            nn.init.zeros_(self.adaLN_modulation.weight)
            nn.init.zeros_(self.adaLN_modulation.bias)

    def features(self, x, c=None):
        """What the output projection reads: the final norm, modulated by the conditioning."""
        x = self.norm_final(x)
        if c is not None:
            shift, scale = per_position(self.adaLN_modulation(c)).chunk(2, dim=2)
            x = modulate(x, shift, scale)
        return x

    def forward(self, x, c=None):
        return self.linear(self.features(x, c))


class DiT(nn.Module):
    """backbone(x, sigma, *, weights=None, class_cond=None, ...) -> logits (B, L, vocab_size)
    (duolm.contracts.Backbone).

    x: token ids (B, L), soft logits (B, L, V), or ids (B, L, k) with weights (B, L, k).
    sigma: (B,) noise conditioning, or (B, L) one per position (block diffusion: each block its own
    noise level, the clean copy 0); ignored, and may be None, when causal.
    class_cond: (B,) labels of a class-conditional DiT (num_classes > 0; label num_classes is the
    null label). The papers' DiT has no classes; duolm adds the label embedding to sigma's.
    head: a function of (features (B, L, H), weight (V, H), bias (V,)) whose result forward returns in
    place of the logits: losses that chunk the output projection (duolm.core.chunked_loss) run it inside
    forward, so wrappers that hook forward (DDP, FSDP) see every parameter used.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c = config
        cond = None if c.causal else c.cond_dim
        self.vocab_embed = EmbeddingLayer(c.hidden_size, c.vocab_size)
        if not c.causal:
            self.sigma_map = TimestepEmbedder(c.cond_dim)
        if c.num_classes:
            self.class_map = nn.Embedding(c.num_classes + 1, c.cond_dim)  # row num_classes: no class
        self.rotary_emb = Rotary(c.hidden_size // c.n_heads)
        self.blocks = nn.ModuleList(DiTBlock(c.hidden_size, c.n_heads, cond, c.dropout, c.causal)
                                    for _ in range(c.n_blocks))
        self.output_layer = FinalLayer(c.hidden_size, c.vocab_size, cond)

    @property
    def capabilities(self) -> Capabilities:
        """Causal (AR, no noise level) or bidirectional with block diffusion's masks; a cache either way."""
        c = self.config
        return Capabilities(attention=("causal",) if c.causal else ("bidirectional", "block_causal"), kv_cache=True,
                            head=True, class_conditioning=c.num_classes > 0, soft_inputs=True,
                            time_conditioning=not c.causal, ragged_rows=True)

    def set_step(self, step: int | None) -> None:
        """The DiT's forward does not depend on the training step."""

    def forward(self, x, sigma=None, *, weights=None, class_cond=None, positions=None, position_offset: int = 0,
                attn_mask=None, cache=None, store_kv: bool = True, head=None, self_cond=None):
        """attn_mask (S, S_keys) bool and positions (S,) rotary positions: block diffusion's passes
        (duolm.core.block_attention); cache (a DiTCache) with store_kv=False: attend to the cache and
        this call's tokens without keeping them (a noisy block between denoising steps)."""
        if self_cond is not None:
            raise CapabilityError("the DiT has no self-conditioning input (`self_cond`)")
        if class_cond is not None and not self.config.num_classes:
            raise SettingError("this DiT is unconditional (`DiTConfig.num_classes` = 0); it takes no labels")
        h = self.vocab_embed(x, weights)  # (B, L, H)
        c = None
        if not self.config.causal:
            c = self.sigma_map(sigma)
            if class_cond is not None:
                label = self.class_map(class_cond)
                c = c + (label[:, None] if c.dim() == 3 else label)
            c = F.silu(c)
        L = h.shape[1]
        starts = cache.starts if cache is not None else None
        if starts is not None:  # rows that start at their own slot: own positions, their padding unread
            if positions is not None or attn_mask is not None:
                raise CapabilityError("a cache of rows with their own starts takes no `positions` or `attn_mask`")
            slots = position_offset + torch.arange(L, device=h.device)
            pos = (slots[None] - starts.to(h.device)[:, None]).clamp(min=0)  # (B, L); padding at 0
            cos, sin = self.rotary_emb(int(pos.max()) + 1, h.device)
            rotary = (cos[pos], sin[pos])
            attn_mask = ragged_mask(starts.to(h.device), len(cache), slots, causal=self.config.causal)
        elif positions is None:
            cos, sin = self.rotary_emb(position_offset + L, h.device)
            rotary = (cos[position_offset:], sin[position_offset:])
        else:
            cos, sin = self.rotary_emb(int(positions.max()) + 1, h.device)
            rotary = (cos[positions], sin[positions])
        for i, block in enumerate(self.blocks):
            h = block(h, rotary, c, cache, i, attn_mask=attn_mask, store=store_kv)
        if head is not None:
            out = self.output_layer
            return head(out.features(h, c), out.linear.weight, out.linear.bias)
        return self.output_layer(h, c)

    def compile(self, **kwargs):
        """torch.compile the transformer blocks in place (parameter names, so checkpoints, unchanged).

        The blocks are the hot path and compile without graph breaks; the embedding (three input
        kinds) and the output head stay eager, because the chunked loss runs Python loops and
        autograd inside the head (duolm.core.chunked_loss), which a compiled graph would break around.
        """
        for block in self.blocks:
            block.compile(**kwargs)

    def new_cache(self) -> "DiTCache":
        """An empty key-value cache (one entry per block): AR's incremental decoding, block diffusion's
        clean blocks."""
        return DiTCache(len(self.blocks))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.vocab_embed.embedding.numel()
        return n


def ragged_mask(starts: torch.Tensor, cached: int, slots: torch.Tensor, *, causal: bool) -> torch.Tensor:
    """(B, 1, S, cached + S) bool: who the S new positions (at cache slots `slots`) of each row may read:
    the cache from the row's start on and the new positions (causal: only those up to itself). A
    padding position (before its row's start: a prompt shorter than the others read in one call)
    reads itself only, which keeps its output finite; nobody reads it."""
    keys = torch.arange(cached + len(slots), device=starts.device)
    mask = (keys[None, None, :] >= starts[:, None, None])  # (B, 1, K)
    if causal:
        mask = mask & (keys[None, :] <= slots[:, None])[None]  # (B, S, K)
    else:
        mask = mask.expand(-1, len(slots), -1)
    return (mask | (keys[None, :] == slots[:, None])[None])[:, None]


class LayerKV:
    """Keys and values (after rotary) of one transformer block, (B, heads, S, head_dim) each."""

    def __init__(self, k=None, v=None):
        self.k, self.v = k, v

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def pair(self):
        """(keys, values), or None while nothing is cached."""
        return None if self.k is None else (self.k, self.v)

    def extend(self, k, v, keep: bool = True):
        """The cached keys and values followed by k, v; kept for later calls when keep."""
        k_all = k if self.k is None else torch.cat([self.k, k], dim=2)
        v_all = v if self.v is None else torch.cat([self.v, v], dim=2)
        if keep:
            self.k, self.v = k_all, v_all
        return k_all, v_all


class DiTCache:
    """The DiT's key-value cache (duolm.contracts.KVCache): one LayerKV per transformer block.

    Rows of different lengths (continuous batching, duolm.sampling.continuous): `starts` (B,) is the
    slot where each row's first token is, the slots before it padding no call reads; forward then
    numbers each row's positions from its start (position_offset counts slots). None: every row
    starts at slot 0."""

    def __init__(self, n_layers: int = 0, layers: list[LayerKV] | None = None, starts: torch.Tensor | None = None):
        self.layers = layers if layers is not None else [LayerKV() for _ in range(n_layers)]
        self.starts = starts

    def joined(self, other: "DiTCache", rows: int, other_rows: int) -> "DiTCache":
        """A cache of this one's `rows` rows followed by `other`'s `other_rows`, the shorter left-padded
        so both end at the same slot (an empty cache counts its rows too)."""
        layers, starts = join_rows([c.pair() for c in self.layers], rows, len(self), self.starts,
                                   [c.pair() for c in other.layers], other_rows, len(other), other.starts)
        return DiTCache(layers=[LayerKV(*kv) if kv is not None else LayerKV() for kv in layers], starts=starts)

    def trim_padding(self) -> int:
        """Drop the padding slots every row has (after rows leave); returns how many were dropped."""
        k = common_padding(self.starts)
        if k:
            for c in self.layers:
                if c.k is not None:
                    c.k, c.v = c.k[:, :, k:], c.v[:, :, k:]
            self.starts = self.starts - k
        return k

    def __len__(self) -> int:
        return len(self.layers[0]) if self.layers else 0

    def append(self, k, v, layer: int, *, keep: bool = True):
        return self.layers[layer].extend(k, v, keep)

    def crop(self, length: int) -> None:
        for c in self.layers:
            if c.k is not None:
                c.k, c.v = c.k[:, :, :length], c.v[:, :, :length]

    def select_rows(self, rows: torch.Tensor) -> None:
        for c in self.layers:
            if c.k is not None:
                c.k, c.v = c.k[rows], c.v[rows]
        if self.starts is not None:
            self.starts = self.starts[rows.to(self.starts.device)]

    def keep_positions(self, index: torch.Tensor) -> "DiTCache":
        return DiTCache(layers=[LayerKV(c.k[:, :, index], c.v[:, :, index]) for c in self.layers])
