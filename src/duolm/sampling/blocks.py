"""Block-by-block generation with an exact key-value cache (block diffusion, BD3-LM and Duo's blocks).

Each new block starts from the prior and is denoised by any x_0 sampler of the table (ancestral,
greedy tail, Ψ, MDLM's cached ancestral) as if it were a whole sequence of block_size tokens, with a
denoiser that reads the clean blocks from the cache; its finished tokens are then written to the
cache once, at noise level 0, as the training pass's clean half computes them. So every call costs
block_size tokens of attention queries and the cached logits equal the training pass's (tests,
float64). The length is not bounded by the model's: rotary positions continue. Classifier-free
guidance keeps a second cache, the same blocks under the null label, for the unconditional model.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from duolm.core.block_attention import block_causal_mask
from duolm.core.conditioning import null_labels, with_labels
from duolm.errors import SettingError
from duolm.io.progress import progress_bar
from duolm.sampling.ancestral import denoiser_from
from duolm.sampling.guidance import guided_denoiser
from duolm.sampling.observers import NOTHING, Observer, Recorder
from duolm.sampling.registry import SAMPLERS, SamplingModel, tempered
from duolm.sampling.semi_ar import eos_after_first, held_positions


class BlockCall:
    """A call of the backbone for one block: its logits (no head to fuse), no cache of its own."""

    backbone: object

    @property
    def capabilities(self):
        return self.backbone.capabilities.changed(head=False, kv_cache=False)


class CachedBlock(BlockCall):
    """backbone(x_block, sigma) for the block at `offset`: attends to the cache and to itself; the
    cache is not extended (a noisy block changes between steps). A self-conditioned backbone
    (DiffusionGemma) is fed the previous call's logits, or what a sampler feeds in their place
    (the EB-sampler's tempered logits); the first call of a block has none."""

    def __init__(self, backbone, cache, offset: int):
        self.backbone, self.cache, self.offset = backbone, cache, offset
        self.previous = None

    def feed(self, logits: torch.Tensor) -> None:
        """What the next call is self-conditioned on (its samplers' say over the default)."""
        self.previous = logits

    def __call__(self, x, sigma, weights=None, class_cond=None):
        conditioned = self.backbone.capabilities.self_conditioning
        out = self.backbone(x, sigma, weights=weights, cache=self.cache, position_offset=self.offset,
                            class_cond=class_cond, store_kv=False, **({"self_cond": self.previous} if conditioned else {}))
        if conditioned:  # no copy: samplers normalise these logits in place, which leaves their softmax as it is
            self.previous = out.detach()
        return out


class UncachedBlock(BlockCall):
    """The same call without a cache: the clean prefix and the noisy block in one block-causal pass
    (the prefix at noise level 0), the block's rows returned. The reference the cache must equal."""

    def __init__(self, backbone, prefix: torch.Tensor, block_size: int):
        self.backbone, self.prefix, self.block_size = backbone, prefix, block_size

    def __call__(self, x, sigma, weights=None, class_cond=None):
        P = self.prefix.shape[1]
        inputs = torch.cat([self.prefix.to(x.device), x], dim=1)
        if sigma is not None and P:
            per_token = sigma.reshape(-1, 1).expand(-1, x.shape[1])
            sigma = torch.cat([torch.zeros(x.shape[0], P, dtype=sigma.dtype, device=sigma.device), per_token], 1)
        mask = block_causal_mask(inputs.shape[1], self.block_size, x.device)
        return self.backbone(inputs, sigma, weights=weights, class_cond=class_cond, attn_mask=mask)[:, P:]


@torch.no_grad()
def commit_block(backbone, cache, block: torch.Tensor, offset: int, labels=None) -> None:
    """Write a finished block's keys and values into the cache (noise level 0, the clean half).

    Only the keys and values are wanted, so a backbone that takes a head skips its output projection
    (at a GPT-2 vocabulary that projection is most of a 16-token call's time)."""
    sigma = torch.zeros(block.shape[0], device=block.device)
    head = {"head": _no_logits} if backbone.capabilities.head else {}
    backbone(block, sigma, cache=cache, position_offset=offset, class_cond=labels, store_kv=True, **head)


def _no_logits(features, weight, bias):
    return None


def block_sample(method, backbone, spec, batch: int, total_length: int, *, generator=None, device=None,
                 progress: bool = False, observer: Observer = NOTHING, eos_id: int | None = None, prefix=None,
                 labels: torch.Tensor | None = None, guidance: float | None = None,
                 cache: bool = True, fixed=None) -> torch.Tensor:
    """(batch, total_length) token ids, generated block by block; prefix: token ids held at the start
    (whole blocks go straight into the cache, a partial one is held inside the first sampled block);
    fixed: (mask, values), each (batch, <= total_length), in place of prefix: each row's own held
    tokens (prompts of different lengths), a block held by every row going straight into the cache;
    spec.stop_at_eos stops once every sequence holds an EOS after its first token. cache=False runs
    every call over the whole clean prefix instead (the same draws; the baseline it is measured
    against). The observer gets the counts of every block summed (denoiser_calls, cached_calls,
    commit_calls, blocks)."""
    bs = method.block_size
    guided = guidance is not None and guidance != 1.0
    if guided and labels is None:
        raise SettingError("`GenerationRequest.guidance` mixes the class-conditional and the unconditional model; this one is "
                         "unconditional (no labels), so sample with guidance 1")
    entry = SAMPLERS[spec.predictor]
    if "blocks" not in entry.strategies:
        raise SettingError(f"block diffusion samples with an x_0 sampler (ancestral, psi), not "
                         f"`SamplerSpec.predictor`={spec.predictor}")
    if backbone.capabilities.encoder_prefix:
        return canvas_sample(method, backbone, spec, batch, total_length, prefix=prefix, generator=generator,
                             device=device, progress=progress, observer=observer, eos_id=eos_id)
    cache = cache and backbone.capabilities.kv_cache  # a backbone without one: the cache-free pass
    one_block = replace(spec, total_length=None, prefix=None)
    device = device or next(backbone.parameters()).device
    prefix = torch.as_tensor(list(prefix or []), dtype=torch.long)
    caches = backbone.new_cache() if cache else None
    if guided:  # the unconditional model (the null label) keeps its own cache of the same blocks
        null = null_labels(len(labels), backbone.config.num_classes, labels.device)
        null_caches = backbone.new_cache() if cache else None
    if fixed is None:
        fixed = held_positions(batch, total_length, prefix)
    held_mask, held_values = (f.to(device) for f in fixed)
    prompt_end = int(held_mask.any(0).nonzero().max()) + 1 if held_mask.any() else 0
    out = torch.empty(batch, 0, dtype=torch.long, device=device)
    calls = {"denoiser_calls": 0, "cached_calls": 0, "commit_calls": 0}
    # one bar for the whole generation, a block a tick (not one bar per block)
    bar = progress_bar(total=-(-total_length // bs), disable=not progress, desc="sampling", unit="block")
    while out.shape[1] < total_length:
        offset = out.shape[1]
        m, v = _block_of(held_mask, offset, bs), _block_of(held_values, offset, bs)
        if bool(m.all()):  # a whole block of the prompt in every row: no sampling
            block = v
        else:
            net = CachedBlock(backbone, caches, offset) if cache else UncachedBlock(backbone, out, bs)
            model = SamplingModel.from_method(method, net, labels=labels)
            if guided:
                net_u = CachedBlock(backbone, null_caches, offset) if cache else UncachedBlock(backbone, out, bs)
                model = replace(model, guided=True, denoiser=guided_denoiser(
                    model.denoiser, denoiser_from(method, with_labels(net_u, null)), float(guidance)))
            model = tempered(model, spec.temperature)
            st = Recorder()
            block = entry.run(model, one_block, (batch, bs), bos_id=None, fixed=(m, v) if bool(m.any()) else None,
                              generator=generator,
                              device=device, disable_progress=True, observer=st)
            for k in ("denoiser_calls", "cached_calls"):
                calls[k] += st.counts.get(k, 0)
        if cache:
            commit_block(backbone, caches, block, offset, labels)
            calls["commit_calls"] += 1
            if guided:
                commit_block(backbone, null_caches, block, offset, null)
                calls["commit_calls"] += 1
        out = torch.cat([out, block], dim=1)
        bar.update(1)
        if spec.stop_at_eos and eos_id is not None and offset + bs >= prompt_end and \
                ((out[:, 1:] == eos_id).any(-1)).all():
            break
    bar.close()
    out = out[:, :total_length]
    if spec.stop_at_eos and eos_id is not None:  # after a sequence's first EOS, EOS
        out = eos_after_first(out, eos_id)
    observer.report(**calls, blocks=-(-out.shape[1] // bs))
    return out


def _block_of(held: torch.Tensor, offset: int, bs: int) -> torch.Tensor:
    """Columns offset .. offset + bs of a (batch, n) held mask or values, padded with False / 0 past n."""
    part = held[:, offset:offset + bs]
    if part.shape[1] < bs:
        part = torch.cat([part, part.new_zeros(part.shape[0], bs - part.shape[1])], 1)
    return part


@torch.no_grad()
def canvas_sample(method, backbone, spec, batch: int, total_length: int, *, prefix, prefix_mask=None,
                  generator=None, device=None, progress: bool = False, observer: Observer = NOTHING,
                  eos_id: int | None = None) -> torch.Tensor:
    """Block generation for a backbone whose encoder reads the prompt (encoder_prefix: DiffusionGemma).

    The whole prompt goes through the encoder once, at any length; then canvases of block_size
    tokens follow it, each denoised by the chosen x_0 sampler through the decoder (self-conditioned
    where the backbone is) and committed through the encoder, until `total_length` tokens (the
    prompt included, whole canvases) or, with spec.stop_at_eos, until every row holds an EOS in what
    it generated (after which its tokens are EOS). prefix: ids (P,) for every row, or (B, P) with
    prefix_mask (B, P) bool (False: left padding, which no position attends to, as transformers'
    attention_mask). Returns (B, P + generated) ids, the prompt included. The observer gets the
    counts of every canvas summed (denoiser_calls, commit_calls, blocks)."""
    bs = method.block_size
    entry = SAMPLERS[spec.predictor]
    if "blocks" not in entry.strategies:
        raise SettingError(f"a canvas is sampled with an x_0 sampler (ancestral, psi, entropy_bound), not "
                           f"`SamplerSpec.predictor`={spec.predictor}")
    device = device or next(backbone.parameters()).device
    prefix = torch.as_tensor(list(prefix) if isinstance(prefix, (list, tuple)) else prefix, dtype=torch.long)
    prefix = (prefix[None].expand(batch, -1) if prefix.dim() == 1 else prefix).to(device)
    if prefix.shape[1] == 0:
        raise SettingError("this model's encoder reads a prompt before the first canvas: give "
                           "`SamplerSpec.prefix` at least one token (the BOS)")
    one_block = replace(spec, total_length=None, prefix=None)
    cache = backbone.new_cache()
    backbone(prefix, None, cache=cache, store_kv=True, attn_mask=prefix_mask)
    out, P = prefix, prefix.shape[1]
    calls = {"denoiser_calls": 0, "commit_calls": 1}
    canvases = max(1, -(-(total_length - P) // bs))
    bar = progress_bar(total=canvases, disable=not progress, desc="sampling", unit="canvas")
    for i in range(canvases):
        if i:  # the finished canvas joins the prompt in the encoder's cache
            backbone(out[:, -bs:], None, cache=cache, store_kv=True, position_offset=out.shape[1] - bs)
            calls["commit_calls"] += 1
        net = CachedBlock(backbone, cache, out.shape[1])
        model = tempered(SamplingModel.from_method(method, net), spec.temperature)
        st = Recorder()
        block = entry.run(model, one_block, (batch, bs), bos_id=None, fixed=None, generator=generator, device=device,
                          disable_progress=True, observer=st)
        calls["denoiser_calls"] += st.counts.get("denoiser_calls", 0)
        out = torch.cat([out, block], dim=1)
        bar.update(1)
        if spec.stop_at_eos and eos_id is not None and (out[:, P:] == eos_id).any(-1).all():
            break
    bar.close()
    if spec.stop_at_eos and eos_id is not None:  # after a row's first generated EOS, EOS
        out = eos_after_first(out, eos_id, start=P)
    observer.report(**calls, blocks=-(-(out.shape[1] - P) // bs))
    return out
