"""The per-token loss of a backbone whose encoder reads the clean prefix (encoder_prefix: DiffusionGemma).

Block diffusion for a DiT or model=hf scores every block in one pass over x_t ⊕ x_0 with the
block-causal mask (duolm.core.methods.BlockTrainingPass). An encoder-prefix network cannot run that
pass: its clean tokens go through a causal encoder into a cache and each noisy canvas through a
decoder that reads it. So here the prompt (a row's leading `clean` positions; without any, its
first token, which is then not scored: the decoder needs at least one token to read) goes through
the encoder; the rest is cut into canvases of block_size tokens from there, as generation lays
them out (the last one completed with the row's own padding, not scored); each canvas is noised at
its own time t, scored by the decoder against the cache (self-conditioning's zero signal: the
first step's input), and then committed clean through the encoder, teacher-forced, before the
next. In training (gradients on, the network in train mode) a self-conditioned backbone is
trained as self-conditioning is (Chen et al. 2022, "Analog Bits"): for each canvas, with
probability SELF_CONDITIONING (one draw per canvas, from the run's generator), a first pass
without gradients predicts, and its logits are fed to the scored pass; otherwise the zero signal.
(NeMo AutoModel's DiffusionGemma recipe could not be read here, offline: whether it draws per row,
with transformers' self_conditioning_mask, or per batch is not checked; this draws per canvas.)
Evaluation always scores with the zero signal, the first sampling step's input. The per-token
loss is the method's, so the bound is the method's NELBO with whatever schedule the method states
(for DiffusionGemma: the one assumed at load, duolm.checkpoints.diffusion_gemma.ASSUMED_NOISE). Rows are scored in groups of equal prompt length.
"""
from __future__ import annotations

import torch

from duolm.contracts import CapabilityError

SELF_CONDITIONING = 0.5  # the share of training canvases scored after a first, gradient-free prediction


def canvas_token_loss(method, backbone, x0: torch.Tensor, valid: torch.Tensor, t: torch.Tensor | None = None, *,
                      generator=None, clean: torch.Tensor | None = None):
    """(loss, weight), both (B, L), of x0 under an encoder-prefix backbone (module docstring); t
    (B, canvases) fixes each canvas's time (drawn when None, one per canvas, stratified as block
    times are)."""
    B, L = x0.shape
    C = method.block_size
    if C is None:
        raise CapabilityError("an encoder-prefix backbone scores canvases: `Method.block_size` must be its canvas length")
    lead = _leading_clean(clean, B, L, x0.device)  # (B,) the prompt lengths
    nll = torch.zeros(B, L, dtype=method.loss_dtype, device=x0.device)
    weight = valid.float().clone()
    weight[torch.arange(L, device=x0.device)[None] < lead[:, None]] = 0.0
    for P in sorted(set(lead.tolist())):
        rows = (lead == P).nonzero()[:, 0]
        n = max(1, -(-(L - P) // C))
        times = t[rows] if t is not None else method.sample_times(len(rows), generator=generator, device=x0.device,
                                                                  blocks=n)
        nll[rows] = _rows_loss(method, backbone, x0[rows], P, n, times.reshape(len(rows), n), generator)
    return nll, weight


def _leading_clean(clean, B: int, L: int, device) -> torch.Tensor:
    if clean is None:
        return torch.ones(B, dtype=torch.long, device=device)
    leading = torch.cumprod(clean.long(), dim=1).sum(1)
    return leading.clamp_min(1)


def _canvases(backbone, clean: torch.Tensor, prompt: int, size: int):
    """(cache, start, end) of each canvas of `size` tokens from `prompt` on: the clean prompt goes into
    the encoder's cache first, and each clean canvas after the caller has scored it (not the last)."""
    length = clean.shape[1]
    cache = backbone.new_cache()
    backbone(clean[:, :prompt], None, cache=cache, store_kv=True)
    for a in range(prompt, length, size):
        b = min(a + size, length)
        yield cache, a, b
        if b < length:
            backbone(clean[:, a:b], None, cache=cache, store_kv=True, position_offset=a)


def _rows_loss(method, backbone, x0, P: int, n: int, times, generator) -> torch.Tensor:
    B, L = x0.shape
    C = method.block_size
    pad = x0[:, -1:].expand(B, P + n * C - L) if P + n * C > L else x0[:, :0]
    full = torch.cat([x0, pad], 1)
    training = backbone.capabilities.self_conditioning and backbone.training and torch.is_grad_enabled()
    out = torch.zeros(B, P + n * C, dtype=method.loss_dtype, device=x0.device)
    for k, (cache, a, b) in enumerate(_canvases(backbone, full, P, C)):
        canvas = full[:, a:b]
        tk = times[:, k:k + 1]
        sched = method.schedule(tk.to(torch.float64) if method.loss_dtype == torch.float64 else tk)
        alpha, dalpha = sched.alpha.to(method.loss_dtype), sched.dalpha.to(method.loss_dtype)
        x_t = method.process.sample_xt(canvas, alpha, generator=generator)
        sigma = method.sigma(alpha)
        extra = {}
        if training and torch.rand((), generator=generator, device=generator.device if generator else None) \
                < SELF_CONDITIONING:
            with torch.no_grad():
                extra["self_cond"] = backbone(x_t, sigma, cache=cache, store_kv=False, position_offset=a).detach()
        logits = backbone(x_t, sigma, cache=cache, store_kv=False, position_offset=a, **extra)
        read = method.read_logits(logits.to(method.loss_dtype), x_t, alpha)
        out[:, a:b] = method.loss_from_output(read, x_t, canvas, tk, alpha, dalpha)
    return out[:, :L]


def canvas_predictions(method, backbone, x0: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, prompt: int = 1):
    """log p(x_0 | x_t) (B, L, K) at every position from `prompt` on, as the canvas loss reads it: the first
    `prompt` tokens of x0 through the encoder, then each canvas of x_t (at alpha (B, 1)) through the decoder,
    the clean canvas committed before the next (positions before `prompt`: zeros). DCD's student and
    teacher read canvases this way (duolm.training.distill)."""
    B, L = x0.shape
    out = None
    for cache, a, b in _canvases(backbone, x0, prompt, method.block_size):
        logits = backbone(x_t[:, a:b], method.sigma(alpha), cache=cache, store_kv=False, position_offset=a)
        read = method.read_logits(logits, x_t[:, a:b], alpha)
        if out is None:
            out = read.new_zeros(B, L, read.shape[-1])
        out[:, a:b] = read
    return out


__all__ = ["canvas_predictions", "canvas_token_loss"]
