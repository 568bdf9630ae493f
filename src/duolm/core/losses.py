"""Per-token losses of every method, as pure functions of model outputs and the noise level.

Shapes: B batch, L length, K states. alpha and dalpha broadcast as (B, 1).
Every function returns a (B, L) tensor of per-token losses in nats whose
expectation over t ~ U[0, 1] (or over the T discrete steps) and x_t is the
method's NELBO (for AR: the exact NLL).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from duolm.core.parameterizations import NEG_INF


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, -1, idx[..., None])[..., 0]


def ar_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy -log p(x_i | x_<i); logits (B, L, K) already shifted to line up with targets (B, L)."""
    return -_gather(logits.log_softmax(-1), targets)


def mdlm_nelbo(log_p_x0: torch.Tensor, x_t, x0, alpha, dalpha, mask_id: int) -> torch.Tensor:
    """MDLM's continuous-time NELBO integrand: -alpha'/(1 - alpha) * -log p(x_0 | x_t) on masked tokens.

    With the SUBS parameterisation unmasked tokens are copied, so they cost nothing.
    """
    weight = -dalpha / (1.0 - alpha)  # positive
    masked = (x_t == mask_id).to(log_p_x0.dtype)
    return weight * masked * (-_gather(log_p_x0, x0))


def d3pm_absorbing_nelbo(log_p_x0: torch.Tensor, x_t, x0, alpha_s, alpha_t, num_steps: int, mask_id: int):
    """T * KL(q(x_s | x_t, x_0) || p(x_s | x_t)) for the absorbing process at s = t - 1/T.

    On a masked x_t both distributions put (1 - a_s)/(1 - a_t) on the mask and
    the rest on x_0 (for q) or on p(x_0 | x_t) (for the model), so the KL is
    (a_s - a_t)/(1 - a_t) * -log p(x_0 | x_t). At t = 1/T, s = 0 and a_s = 1: that
    step is D3PM's reconstruction term -log p(x_0 | x_{1/T}), so the sum over
    t in {1/T, ..., 1} is the whole discrete-time NELBO (plus the prior term).
    The papers' code puts the masking probability 1 - a_s where a_s belongs.
    """
    masked = (x_t == mask_id).to(log_p_x0.dtype)
    weight = num_steps * (alpha_s - alpha_t) / (1.0 - alpha_t)
    return weight * masked * (-_gather(log_p_x0, x0))


def uniform_nelbo(log_p_x0: torch.Tensor, x_t, x0, alpha, dalpha) -> torch.Tensor:
    """Continuous-time NELBO integrand of uniform-state diffusion (Duo's closed form), per token.

    The forward rate is beta/K between any two states, beta = -alpha'/alpha.
    With xbar(y) = K alpha [y = x_0] + 1 - alpha and the model's
    xbar_theta(y) = K alpha p(y | x_t) + 1 - alpha, the reverse rates into y are
    R(y) = beta/K * xbar(y)/xbar(x_t) and R_theta(y) likewise, and the integrand
    is sum_{y != x_t} R_theta - R - R log(R_theta / R) >= 0. It is evaluated in
    O(K) per token because xbar takes only two values.
    """
    K = log_p_x0.shape[-1]
    a = alpha[..., None] if alpha.ndim == x_t.ndim else alpha
    a = a.to(log_p_x0.dtype)
    xbar_theta = K * a * log_p_x0.exp() + (1.0 - a)           # (B, L, K)
    a = a[..., 0]                                              # (B, 1)
    neq = (x0 != x_t).to(log_p_x0.dtype)                      # (B, L)
    xbar_xt = K * a * (1.0 - neq) + (1.0 - a)
    xbar_theta_xt = _gather(xbar_theta, x_t)
    log_xbar_theta_xt = xbar_theta_xt.log()
    log_xbar_theta_x0 = _gather(xbar_theta, x0).log()
    sum_log_xbar_theta = xbar_theta.log().sum(-1)

    rates = K / xbar_theta_xt - K / xbar_xt  # sum_{y != x_t} (R_theta(y) - R(y)), in units of beta/K
    # sum_{y != x_t} xbar(y) log xbar_theta(y)
    cross = (1.0 - a) * (sum_log_xbar_theta - log_xbar_theta_xt) + K * a * neq * log_xbar_theta_x0
    # sum_{y != x_t} xbar(y) log xbar(y)
    one_minus_a = (1.0 - a).expand_as(neq)
    peak = (K * a + 1.0 - a).expand_as(neq)
    self_term = (K - 1 - neq) * torch.xlogy(one_minus_a, one_minus_a) + neq * torch.xlogy(peak, peak)
    log_ratio_sum = (cross - self_term - (K - xbar_xt) * (log_xbar_theta_xt - xbar_xt.log())) / xbar_xt
    coef = -dalpha.to(log_p_x0.dtype) / (K * a)  # beta / K
    return coef * (rates - log_ratio_sum)


def cross_entropy_and_grad(logits: torch.Tensor, targets, scale, weight, exclude: int | None = None):
    """scale * -log softmax(logits)[target] for n tokens and the gradient of sum_i weight_i * loss_i
    with respect to the logits, scale * weight * (p - onehot(target)): (loss (n,), grad (n, K)).

    AR's cross-entropy is scale 1; MDLM's NELBO (SUBS) is scale -alpha'/(1 - alpha) on masked
    tokens and 0 elsewhere, with the mask state excluded from the softmax (`exclude`).
    """
    if exclude is not None:
        logits = logits.index_fill(-1, torch.tensor([exclude], device=logits.device), NEG_INF)
    s = scale.to(logits.dtype)[:, None]
    lse = logits.logsumexp(-1, keepdim=True)
    loss = s * (lse - logits.gather(-1, targets[:, None]))
    grad = logits.sub_(lse).exp_() if exclude is not None else (logits - lse).exp_()  # p
    sw = s * weight.to(logits.dtype)[:, None]
    grad.mul_(sw).scatter_add_(-1, targets[:, None], -sw)
    return loss[:, 0], grad


def uniform_nelbo_and_grad(logits: torch.Tensor, x_t, x0, alpha, dalpha, weight):
    """uniform_nelbo of the mean parameterisation (p = softmax(logits)) for n tokens, and the gradient
    of sum_i weight_i * loss_i with respect to the logits, written out: (loss (n,), grad (n, K)).

    logits (n, K); x_t, x0 (n,); alpha, dalpha, weight (n,). With r_y = K a p_y / xbar_theta(y) and
    R = sum r, every term's derivative is a combination of r, p and the two one-hot vectors at x_t and
    x_0, so the gradient costs a few passes over the chunk instead of autograd's graph of (n, K)
    tensors (duolm.core.chunked_loss; tests/test_chunked_loss.py checks it against autograd).
    """
    n, K = logits.shape
    a, da = alpha.to(logits.dtype)[:, None], dalpha.to(logits.dtype)[:, None]
    w = weight.to(logits.dtype)[:, None]
    p = torch.softmax(logits, -1)
    ka = K * a
    xb = p * ka + (1.0 - a)                                   # xbar_theta (n, K)
    S = xb.log().sum(-1, keepdim=True)
    xb_xt, xb_x0 = xb.gather(-1, x_t[:, None]), xb.gather(-1, x0[:, None])
    neq = (x0 != x_t).to(logits.dtype)[:, None]
    X = ka * (1.0 - neq) + (1.0 - a)                          # xbar(x_t), the true one
    L_t, L_0, log_X = xb_xt.log(), xb_x0.log(), X.log()
    # the loss, as uniform_nelbo writes it
    rates = K / xb_xt - K / X
    cross = (1.0 - a) * (S - L_t) + ka * neq * L_0
    one_minus_a, peak = 1.0 - a, ka + 1.0 - a
    self_term = (K - 1 - neq) * torch.xlogy(one_minus_a, one_minus_a) + neq * torch.xlogy(peak, peak)
    log_ratio_sum = (cross - self_term - (K - X) * (L_t - log_X)) / X
    coef = -da / ka
    loss = coef * (rates - log_ratio_sum)
    # the gradient: c_r r + c_p p + c_t onehot(x_t) + c_0 onehot(x_0), scaled by weight
    r = xb.reciprocal_().mul_(p).mul_(ka)                     # r_y = K a p_y / xbar_theta(y), in xb's memory
    R = r.sum(-1, keepdim=True)
    r_xt, r_x0 = r.gather(-1, x_t[:, None]), r.gather(-1, x0[:, None])
    A = K / xb_xt * r_xt
    c_r = -coef * (1.0 - a) / X
    c_p = coef * (A - (-(1.0 - a) * R + (1.0 - a) * r_xt - ka * neq * r_x0 + (K - X) * r_xt) / X)
    c_t = coef * (-A + ((1.0 - a) + (K - X)) * r_xt / X)
    c_0 = coef * (-ka * neq * r_x0 / X)
    grad = r.mul_(c_r * w).add_(p.mul_(c_p * w))
    grad.scatter_add_(-1, x_t[:, None], c_t * w)
    grad.scatter_add_(-1, x0[:, None], c_0 * w)
    return loss[:, 0], grad


def categorical_kl(q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the last axis, with 0 log 0 = 0."""
    return (torch.xlogy(q, q) - q * log_p.clamp_min(-1e30)).sum(-1)


def uniform_nelbo_discrete(log_p_x0, x_t, x0, alpha_s, alpha_t, num_steps: int, process) -> torch.Tensor:
    """T * KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t)) for the uniform process, s = t - 1/T."""
    K = log_p_x0.shape[-1]
    q = process.posterior(F.one_hot(x0, K).to(log_p_x0.dtype), x_t, alpha_s, alpha_t)
    p = process.posterior(log_p_x0.exp(), x_t, alpha_s, alpha_t)
    return num_steps * categorical_kl(q, p.clamp_min(torch.finfo(p.dtype).tiny).log())


def sedd_score_entropy(log_score: torch.Tensor, x_t, x0, alpha, dalpha, mask_id: int) -> torch.Tensor:
    """SEDD's denoising score entropy for the absorbing process, per token.

    On a masked x_t the true ratio p_t(y)/p_t(mask) is r = alpha/(1 - alpha) for
    y = x_0 and 0 otherwise, so the integrand is
    dsigma * (sum_{y != mask} s(y) - r log s(x_0) + r (log r - 1)), dsigma = -alpha'/alpha.
    """
    a = alpha.to(log_score.dtype)
    r = a / (1.0 - a)
    dsigma = -dalpha.to(log_score.dtype) / a
    score = log_score.exp()
    not_mask = torch.ones(log_score.shape[-1], dtype=log_score.dtype, device=log_score.device)
    not_mask[mask_id] = 0.0
    pos = (score * not_mask).sum(-1)
    neg = r * _gather(log_score, x0)
    const = r * (r.log() - 1.0)
    masked = (x_t == mask_id).to(log_score.dtype)
    return dsigma * masked * (pos - neg + const)


def sample_times(n: int, *, generator=None, antithetic: bool = True, eps: float = 1e-3,
                 index: torch.Tensor | None = None, total: int | None = None,
                 num_steps: int = 0, device=None) -> torch.Tensor:
    """Diffusion times for n examples, in [eps, 1] (continuous) or {1/T, ..., 1} (num_steps = T > 0).

    Antithetic (stratified) sampling splits [0, 1) into `total` equal strata,
    one per example of the global batch, and draws each example's time
    uniformly inside its own stratum; this lowers the variance of the NELBO's
    gradient. A batch split over ranks and accumulation steps passes each
    example's global position `index`, so the split batch covers the same
    strata as one big batch; no communication is needed.
    """
    if index is None:
        index = torch.arange(n, device=device)
        total = n
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    u01 = (u + index.to(torch.float64)) / total if antithetic else u
    if num_steps > 0:
        return ((u01 * num_steps).floor() + 1.0).clamp(max=num_steps).float() / num_steps
    return ((1.0 - eps) * u01 + eps).float()
