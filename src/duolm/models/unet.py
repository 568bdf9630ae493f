"""The image UNet of the Psi-samplers paper (a tau-LDR-style UNet over pixel tokens), in plain PyTorch.

Pixels are tokens: an image of C x H x W values in [0, vocab_size) is a sequence laid out
channel-major, `b (c h w)`. The network sees the pixels centred to [-1, 1], a time embedding (the
transformer sinusoid of sigma * time_scale_factor, then two linear layers) plus an optional class
embedding (row num_classes is "no class", the null label of classifier-free guidance), and outputs,
per pixel, a truncated discretised logistic over the vocabulary's bins, whose mean is
tanh(centred input + h): logits ordinal in the pixel value, (B, C H W, vocab_size).

Parameter names follow the papers' `models/unet.py` so their checkpoints load by name
(tests/test_unet.py checks their logits). Unlike theirs, it runs on any device (theirs builds the
bin centres on 'cuda').
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from duolm.contracts import Capabilities, CapabilityError
from duolm.errors import SettingError

MASK_INPUTS = ("gray", "embedding")


@dataclass
class UNetConfig:
    vocab_size: int = 256
    channels: int = 3                 # image channels
    image_size: int = 32              # height = width
    ch: int = 128
    num_res_blocks: int = 2
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    attn_scale: int = 1               # the scale (index into ch_mult) with self-attention
    dropout: float = 0.1
    skip_rescale: bool = True
    time_embed_dim: int = 128
    time_scale_factor: float = 1000.0
    num_classes: int = 10             # 0: unconditional (the embedding still has the null row)
    fix_logistic: bool = False        # min of the two logistic forms (more stable); the papers' runs: False
    # how the absorbing (mask) state enters, the last id (vocab_size - 1) of a masked process:
    # 'gray': as one more gray level, just above white (the papers'; their checkpoints load unchanged);
    # 'embedding': centred to 0 (no intensity) plus a learned vector per channel where the pixel is masked
    mask_input: str = "gray"
    type: str = "unet"                # the backbone table's key (duolm.models.backbones)

    def __post_init__(self):
        self.ch_mult = list(self.ch_mult)
        for key, low in (("vocab_size", 2), ("channels", 1), ("image_size", 1), ("ch", 4), ("num_res_blocks", 1),
                         ("time_embed_dim", 2), ("num_classes", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SettingError(f"`UNetConfig.{key}` must be an integer >= {low}, got {value!r}")
        if not self.ch_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise SettingError(f"`UNetConfig.ch_mult` must be a list of integers >= 1, got {self.ch_mult!r}")
        if not 0 <= self.attn_scale < len(self.ch_mult):
            raise SettingError(f"`UNetConfig.attn_scale` must index `UNetConfig.ch_mult` (0..{len(self.ch_mult) - 1}), "
                             f"got {self.attn_scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingError(f"`UNetConfig.dropout` must lie in [0, 1), got {self.dropout}")
        if self.mask_input not in MASK_INPUTS:
            raise SettingError(f"`UNetConfig.mask_input` must be one of {', '.join(MASK_INPUTS)}, got {self.mask_input!r}")
        if self.image_size % (2 ** (len(self.ch_mult) - 1)):
            raise SettingError(f"`UNetConfig.image_size` ({self.image_size}) must be divisible by 2^(len(`UNetConfig.ch_mult`) - 1) "
                             f"= {2 ** (len(self.ch_mult) - 1)} for this UNet")

    @property
    def length(self) -> int:
        return self.channels * self.image_size ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(ch: int) -> int:
    return min(ch // 4, 32)


def group_norm(ch: int) -> nn.GroupNorm:
    """The papers' GroupNorm (min(ch / 4, 32) groups); a channel count it cannot split is a config error."""
    if ch % _groups(ch):
        raise SettingError(f"`UNetConfig.ch` and `UNetConfig.ch_mult` give a layer of {ch} channels, which GroupNorm cannot split into "
                         f"{_groups(ch)} groups; use a `UNetConfig.ch` that is a multiple of 4 (of 32 above 128)")
    return nn.GroupNorm(_groups(ch), ch, eps=1e-6)


class NiN(nn.Module):
    """A 1 x 1 convolution written as a matrix W (in, out), as the papers store it."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(in_ch, out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))
        nn.init.xavier_uniform_(self.W, gain=0.1)

    def forward(self, x):  # (B, C, H, W)
        # channels last, as the papers compute it (the same sums in the same order)
        return (torch.einsum("bhwi,ik->bhwk", x.permute(0, 2, 3, 1), self.W) + self.b).permute(0, 3, 1, 2)


class AttnBlock(nn.Module):
    def __init__(self, ch: int, skip_rescale: bool):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.GroupNorm_0 = group_norm(ch)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = (NiN(ch, ch) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k).reshape(B, H, W, H * W) * C ** -0.5
        w = w.softmax(-1).reshape(B, H, W, H, W)
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, skip_rescale: bool):
        super().__init__()
        self.skip_rescale = skip_rescale
        self.groupnorm0 = group_norm(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.dense0 = nn.Linear(temb_dim, out_ch)
        self.groupnorm1 = group_norm(out_ch)
        self.dropout0 = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin = NiN(in_ch, out_ch)

    def forward(self, x, temb):
        h = self.conv0(F.silu(self.groupnorm0(x)))
        h = h + self.dense0(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout0(F.silu(self.groupnorm1(h))))
        if hasattr(self, "nin"):
            x = self.nin(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # the last row: no class

    def forward(self, labels):
        return self.embedding_table(labels)


def timestep_embedding(t: torch.Tensor, dim: int, max_positions: int = 10_000) -> torch.Tensor:
    """The transformer sinusoid: (B,) -> (B, dim), [sin | cos]."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_positions) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class UNet(nn.Module):
    """forward(x (B, C H W) pixel ids, sigma (B,), class_cond (B,) or None) -> logits (B, C H W, vocab)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        temb_dim = 4 * c.time_embed_dim
        self.temb_modules = nn.ModuleList([nn.Linear(c.time_embed_dim, temb_dim), nn.Linear(temb_dim, temb_dim)])
        self.input_conv = nn.Conv2d(c.channels, c.ch, 3, padding=1)
        if c.mask_input == "embedding":  # (ch, C): added at a masked pixel of channel c (zero at the start)
            self.mask_embedding = nn.Parameter(torch.zeros(c.ch, c.channels))
        res = dict(temb_dim=temb_dim, dropout=c.dropout, skip_rescale=c.skip_rescale)
        skips, in_ch = [c.ch], c.ch
        down, self._skip_after = [], []  # whether a down module's output is kept for the way up
        for scale, mult in enumerate(c.ch_mult):
            for _ in range(c.num_res_blocks):
                down.append(ResBlock(in_ch, c.ch * mult, **res))
                in_ch = c.ch * mult
                self._skip_after.append(scale != c.attn_scale)
                if scale == c.attn_scale:  # the skip is taken after the attention
                    down.append(AttnBlock(in_ch, c.skip_rescale))
                    self._skip_after.append(True)
                skips.append(in_ch)
            if scale != len(c.ch_mult) - 1:
                down.append(Downsample(in_ch))
                self._skip_after.append(True)
                skips.append(in_ch)
        self.downsampling_modules = nn.ModuleList(down)
        self.middle_modules = nn.ModuleList([ResBlock(in_ch, in_ch, **res), AttnBlock(in_ch, c.skip_rescale),
                                             ResBlock(in_ch, in_ch, **res)])
        up = []
        for scale in reversed(range(len(c.ch_mult))):
            for _ in range(c.num_res_blocks + 1):
                up.append(ResBlock(in_ch + skips.pop(), c.ch * c.ch_mult[scale], **res))
                in_ch = c.ch * c.ch_mult[scale]
                if scale == c.attn_scale:
                    up.append(AttnBlock(in_ch, c.skip_rescale))
            if scale != 0:
                up.append(Upsample(in_ch))
        self.upsampling_modules = nn.ModuleList(up)
        self.output_modules = nn.ModuleList([group_norm(in_ch),
                                             nn.Conv2d(in_ch, 2 * c.channels, 3, padding=1)])
        self.cond_map = LabelEmbedder(c.num_classes, temb_dim)

    @property
    def capabilities(self) -> Capabilities:
        """Pixel ids over the whole image, conditioned on the noise level and (with classes) a label."""
        return Capabilities(attention=("bidirectional",), class_conditioning=self.config.num_classes > 0,
                            time_conditioning=True)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Every parameter (the UNet has no token embedding to exclude: it reads pixel values)."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self):
        raise CapabilityError("the UNet has no key-value cache (it denoises the whole image at once)")

    def set_step(self, step: int | None) -> None:
        """The UNet's forward does not depend on the training step."""

    def forward(self, x, sigma=None, *, weights=None, class_cond=None, positions=None, position_offset: int = 0,
                attn_mask=None, cache=None, store_kv: bool = True, head=None, self_cond=None):
        if weights is not None or x.dim() != 2:
            raise CapabilityError("the UNet reads pixel ids (B, C*H*W); relaxed (weighted) inputs are not supported")
        if positions is not None or attn_mask is not None or cache is not None or position_offset or head is not None \
                or self_cond is not None:
            raise CapabilityError("the UNet denoises a whole image in one pass: it takes no attention mask, "
                                  "positions, cache, head or self-conditioning")
        if class_cond is not None and not self.config.num_classes:
            raise SettingError("this UNet is unconditional (`UNetConfig.num_classes` = 0); it takes no labels")
        c = self.config
        B = x.shape[0]
        pixels = x.reshape(B, c.channels, c.image_size, c.image_size)
        x_in = 2 * pixels.float() / c.vocab_size - 1  # [-1, 1)
        masked = None
        if c.mask_input == "embedding":
            # the gray-level form puts the mask 2/V above white, so tanh(x_in + h) starts a masked pixel
            # at white; here it starts at mid-range and the network is told where the masks are
            masked = (pixels == c.vocab_size - 1).to(x_in.dtype)  # (B, C, H, W)
            x_in = x_in * (1 - masked)
        if sigma is None:
            sigma = torch.zeros(B, device=x.device)
        temb = timestep_embedding(sigma.reshape(-1) * c.time_scale_factor, c.time_embed_dim)
        temb = self.temb_modules[1](F.silu(self.temb_modules[0](temb)))  # (B, 4 * time_embed_dim)
        if class_cond is not None:
            temb = temb + self.cond_map(class_cond)
        h = self.input_conv(x_in)
        if masked is not None:
            h = h + torch.einsum("bcxy,hc->bhxy", masked, self.mask_embedding.to(h.dtype))
        skips = [h]
        for m, keep in zip(self.downsampling_modules, self._skip_after):
            h = m(h, temb) if isinstance(m, ResBlock) else m(h)
            if keep:
                skips.append(h)
        for m in self.middle_modules:
            h = m(h, temb) if isinstance(m, ResBlock) else m(h)
        for m in self.upsampling_modules:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, skips.pop()], dim=1), temb)
            else:
                h = m(h)
        h = self.output_modules[1](F.silu(self.output_modules[0](h)))  # (B, 2C, H, W)
        mu = torch.tanh(x_in + h[:, :c.channels])
        return self._truncated_logistic(mu, h[:, c.channels:])

    def _truncated_logistic(self, mu, log_scale):
        """Log-probabilities of the vocabulary's bins in [-1, 1] under a logistic(mu, e^(log_scale - 2)):
        (B, C H W, vocab). Arxiv 2107.03006."""
        S = self.config.vocab_size
        mu, inv_scale = mu.unsqueeze(-1), torch.exp(2 - log_scale).unsqueeze(-1)  # (B, C, H, W, 1)
        width = 2.0 / S
        centres = torch.linspace(-1 + width / 2, 1 - width / 2, S, device=mu.device, dtype=mu.dtype)
        left = (centres - width / 2 - mu) * inv_scale
        right = (centres + width / 2 - mu) * inv_scale
        left_cdf, right_cdf = F.logsigmoid(left), F.logsigmoid(right)

        def log_minus_exp(a, b, eps=1e-6):  # log(e^a - e^b) for b < a
            return a + torch.log1p(-torch.exp(b - a) + eps)

        logits = log_minus_exp(right_cdf, left_cdf)
        if self.config.fix_logistic:
            logits = torch.minimum(logits, log_minus_exp(-left + left_cdf, -right + right_cdf))
        return logits.reshape(mu.shape[0], -1, S)
