"""The output projection and a per-token loss over the vocabulary, a chunk of tokens at a time.

A language model's last layer maps N token features (N, H) to N x K logits, and every loss of
this library (AR cross-entropy, the MDLM / SEDD / D3PM / uniform-state NELBOs, DCD's KL) is a sum
of per-token terms, each a function of that token's K logits. Written plainly, autograd keeps
several (N, K) float32 tensors alive for the backward pass (the logits, the softmax, x̄_θ, its
log, ...): at the papers' length 1024, batch 32 and K = 50,257 one of them is 6.6 GB.

Here the logits of `chunk` tokens are made, the loss and its gradient with respect to them are
computed at once, and the gradient is pushed through the projection before the next chunk:
what survives the forward pass is the gradient of the features (N, H) and of the projection's
weight (K, H) and bias, never an (N, K) tensor. This is what fused linear cross-entropy kernels
do, here for any per-token loss (its gradient comes from autograd on the chunk).

Writing the gradient in the forward pass needs to know how the per-token losses will be summed:
the caller gives `reduction_weights` (N,), and backward accepts upstream gradients proportional
to them (TokenLoss.mean() is such a sum); any other use of the losses' gradient raises.
The logits are accumulated in float32 (or the loss's own dtype) whatever the autocast dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

TARGET_CHUNK_ELEMENTS = 1 << 22  # the floor of logits per chunk (16 MB in float32)
# and at least WIDTH_FACTOR x hidden tokens per chunk (see chunk_tokens)
WIDTH_FACTOR = 0.5
# a loss whose row says its straightforward form is faster at a width (duolm.core.methods.Loss.plain_from_width)
# runs plainly while the batch's logits stay at or below this many (512 MB in float32)
PLAIN_MAX_LOGITS = 1 << 27


def chunk_tokens(num_states: int, hidden: int | None = None) -> int:
    """Tokens per chunk from the projection's shape (K = num_states, H = hidden).

    Every chunk reads the (K, H) weight three times (its logits, the features' gradient, the
    weight's gradient, which it also updates), while its own logits are n x K. A fixed 2^22 logits
    (83 tokens at K = 50,257) re-read GPT-2's 154 MB weight six times per 512 tokens and the AR
    step ran 0.8x the plain one; n = H tokens made the chunk's (n, K) tensors as large as the weight
    and Duo's step memory grew by a third (the README's train-step table). n = H / 2 keeps the
    weight's traffic at most twice the chunk's logits and the chunk's working memory at half the
    weight's size, whatever the batch and length (benchmarks/train_step.py measures both). Without
    a projection (hidden None: the features are the logits) only the floor applies."""
    n = TARGET_CHUNK_ELEMENTS // num_states
    if hidden:
        n = max(n, int(WIDTH_FACTOR * hidden))
    return max(1, n)


@dataclass
class Head:
    """Logits of N tokens, made a chunk at a time: features (N, H) @ weight (K, H)^T + bias.

    weight None: the features are the logits themselves (a backbone without a linear head, such
    as the UNet; only the loss is chunked then).
    """

    features: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    @property
    def num_states(self) -> int:
        return self.features.shape[-1] if self.weight is None else self.weight.shape[0]

    def for_matmul(self) -> "Head":
        """This head with its projection cast once to the dtype the matmul runs in (autocast's, when
        on), so each chunk does not copy the (K, H) weight again."""
        if self.weight is None or not torch.is_autocast_enabled(self.features.device.type):
            return self
        low = torch.get_autocast_dtype(self.features.device.type)
        return Head(self.features, self.weight.to(low), None if self.bias is None else self.bias.to(low))

    def logits(self, rows: slice, dtype: torch.dtype) -> torch.Tensor:
        """The logits of the tokens in `rows` in `dtype`; the matmul runs in the weight's dtype
        (call for_matmul() first under autocast)."""
        f = self.features[rows]
        if self.weight is None:  # a copy: parameterisations may normalise their input in place
            return f.to(dtype, copy=True)
        return F.linear(f.to(self.weight.dtype), self.weight, self.bias).to(dtype)


# loss_fn(logits (n, K), rows) -> per-token loss (n,) of the tokens in `rows`
LossFn = Callable[[torch.Tensor, slice], torch.Tensor]
# grad_fn(logits (n, K), rows, weights (n,)) -> (per-token loss (n,), d sum(weights * loss) / d logits (n, K))
GradFn = Callable[[torch.Tensor, slice, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def chunked_loss(head: Head, loss_fn: LossFn, reduction_weights: torch.Tensor, *, dtype=torch.float32,
                 chunk: int | None = None, grad_fn: GradFn | None = None) -> torch.Tensor:
    """Per-token losses (N,) of loss_fn applied to the head's logits, never holding (N, K) for backward.

    With gradients on, the result's gradient is written in the forward pass for the sum
    sum_i c * reduction_weights[i] * loss[i] (any scalar c, read off in backward): by autograd on
    each chunk, or by grad_fn when the loss has its gradient written out (fewer passes).
    """
    chunk = chunk or chunk_tokens(head.num_states, None if head.weight is None else head.weight.shape[1])
    params = [p for p in (head.features, head.weight, head.bias) if p is not None]
    if not (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
        with torch.no_grad():
            cast = head.for_matmul()
            return torch.cat([loss_fn(cast.logits(slice(i, i + chunk), dtype), slice(i, i + chunk))
                              for i in range(0, head.features.shape[0], chunk)])
    return _ChunkedLoss.apply(head.features, head.weight, head.bias, reduction_weights.detach(), loss_fn, dtype,
                              chunk, grad_fn)


class _ChunkedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, reduction_weights, loss_fn, dtype, chunk, grad_fn):
        head = Head(features.detach(), None if weight is None else weight.detach(),
                    None if bias is None else bias.detach()).for_matmul()
        N = features.shape[0]
        out = torch.empty(N, dtype=dtype, device=features.device)
        grad_features = torch.empty_like(features)
        acc = torch.promote_types(features.dtype, torch.float32)  # parameter gradients accumulate in >= float32
        grad_weight = grad_bias = None  # written by the first chunk (no pass over zeros), added to after
        for i in range(0, N, chunk):
            rows = slice(i, min(N, i + chunk))
            if grad_fn is not None:
                loss, dz = grad_fn(head.logits(rows, dtype), rows, reduction_weights[rows])
            else:
                with torch.enable_grad():
                    z = head.logits(rows, dtype).detach().requires_grad_()
                    loss = loss_fn(z, rows)
                    (dz,) = torch.autograd.grad((loss * reduction_weights[rows].to(loss.dtype)).sum(), z)
            out[rows] = loss.detach()
            if weight is None:
                grad_features[rows] = dz.to(features.dtype)
                continue
            f = head.features[rows]
            dz_mm = dz.to(head.weight.dtype)
            grad_features[rows] = (dz_mm @ head.weight).to(features.dtype)
            first = grad_weight is None
            if first:  # beta = 0: the empty buffer's content is ignored
                grad_weight = torch.empty(weight.shape, dtype=acc, device=weight.device)
            grad_weight.addmm_(dz_mm.t().to(acc), f.to(acc), beta=0 if first else 1)
            if bias is not None:
                db = dz.sum(0).to(acc)
                grad_bias = db if grad_bias is None else grad_bias.add_(db)
        if weight is not None and grad_weight is None:  # no tokens
            grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        if bias is not None and grad_bias is None:
            grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device)
        ctx.save_for_backward(grad_features, grad_weight, grad_bias, reduction_weights)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.dtypes = (weight.dtype if weight is not None else None, bias.dtype if bias is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grad_features, grad_weight, grad_bias, w = ctx.saved_tensors
        scale = _proportionality(grad_out, w)
        # the buffers are this call's own (backward runs once: the graph is freed), so scale in place,
        # and not at all for the usual c = 1 (the loss is the weighted sum itself): no pass over (K, H)
        unit = bool(scale == 1)
        gw = (grad_weight if unit else grad_weight.mul_(scale)) if ctx.has_weight else None
        gb = (grad_bias if unit else grad_bias.mul_(scale)) if ctx.has_bias else None
        return (grad_features if unit else grad_features.mul_(scale.to(grad_features.dtype)),
                None if gw is None else gw.to(ctx.dtypes[0]), None if gb is None else gb.to(ctx.dtypes[1]),
                None, None, None, None, None)


def _proportionality(grad_out: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """c such that grad_out = c * w; raises when the upstream gradient is not of that form."""
    g, w = grad_out.double(), w.double()
    norm = (w * w).sum()
    c = (g * w).sum() / norm.clamp_min(1e-300)
    residual = (g - c * w).abs().max() if g.numel() else g.new_zeros(())
    if residual > 1e-6 * g.abs().max().clamp_min(1e-30):
        raise RuntimeError("the chunked loss wrote its gradient for a weighted sum of its per-token losses "
                           "(TokenLoss.mean()); reduce them that way, or build the method with fused=False")
    return c.to(grad_out.dtype)
