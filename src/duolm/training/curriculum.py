"""Duo's curricula: train the uniform-state denoiser on relaxed Gaussian latents early on.

Early in training the denoiser sees softmax(w_t / tau) of the Gaussian latents
w_t = alpha~ onehot(x_0) + sigma~ eps instead of their argmax x_t, with the
log-SNR confined to a band [gamma_min, gamma_max]; the loss stays the
uniform-state NELBO at alpha_t = T(gamma_t) and x_t = argmax(w_t) (the Duality:
argmax of Gaussian diffusion *is* uniform-state diffusion).

- ``simple`` (Duo): the dense K-dimensional latents and the exact operator.
- ``poly3 ... poly9 / sigmoid`` (Duo++): alpha(t) from a fit of the operator, and,
  with ``top_k > 0``, never the K-dimensional Gaussian: the top-k order statistics
  of the K - 1 noise coordinates, the true token's coordinate, and a closed-form
  (truncated-normal) estimate of the rest of the softmax denominator; the
  denoiser gets a weighted embedding of k token ids.

The papers' efficient sampler sets x_t = x_0 whenever x_0 is anywhere in the
top-k and draws the k ids non-exchangeably; here x_t is the true argmax and the
ids are a uniformly random subset (tests/test_curriculum.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from duolm.core import losses
from duolm.core.methods import TokenLoss
from duolm.core.operator import FIT_KINDS, DiffusionTransform, fit_alpha, gaussian_coefficients, gaussian_latents
from duolm.errors import SettingError

MODES = ("none", "simple", *FIT_KINDS)


@dataclass
class CurriculumSchedule:
    """When the curriculum runs and at which temperature.

    tau is constant at 10**tau_log10_start until step `start`, moves linearly in
    log10 to 10**tau_log10_end at step `end`, and after `end` training is plain Duo.
    """

    mode: str = "simple"
    tau_log10_start: float = -1.0
    tau_log10_end: float = -2.0
    start: int = 100_000
    end: int = 200_000
    gamma_min: float = -3.5
    gamma_max: float = -1.75
    top_k: int = -1

    def __post_init__(self):
        if self.mode not in MODES:
            raise SettingError(f"`CurriculumSchedule.mode` must be one of {list(MODES)}, got {self.mode!r}")
        if self.mode == "none":
            return
        if not self.gamma_min < self.gamma_max:
            raise SettingError(f"`CurriculumSchedule.gamma_min` ({self.gamma_min}) must be below "
                             f"`CurriculumSchedule.gamma_max` ({self.gamma_max})")
        if not 0 <= self.start <= self.end:
            raise SettingError(f"`CurriculumSchedule.start` ({self.start}) and end ({self.end}) must satisfy "
                             f"0 <= start <= end")
        if self.top_k == 0 or self.top_k < -1:
            raise SettingError(f"`CurriculumSchedule.top_k` must be -1 (dense) or >= 1, got {self.top_k}")
        if self.mode == "simple" and self.top_k != -1:
            raise SettingError("`CurriculumSchedule.top_k` needs an efficient mode (poly3 ... poly9, sigmoid); "
                             "mode=simple is the dense original")

    def active(self, step: int) -> bool:
        return self.mode != "none" and step <= self.end

    def tau(self, step: int) -> float:
        if step <= self.start or self.end == self.start:
            lg = self.tau_log10_start
        else:
            frac = min(1.0, (step - self.start) / (self.end - self.start))
            lg = self.tau_log10_start + frac * (self.tau_log10_end - self.tau_log10_start)
        return 10.0 ** lg


class Curriculum:
    """The curriculum's training loss for one vocabulary size; pure function of its inputs."""

    def __init__(self, schedule: CurriculumSchedule, vocab_size: int):
        self.schedule = schedule
        self.K = vocab_size
        self.operator = DiffusionTransform(vocab_size)
        self.fit = None if schedule.mode in ("none", "simple") else \
            fit_alpha(vocab_size, schedule.gamma_min, schedule.gamma_max, schedule.mode)

    def alpha(self, t: torch.Tensor):
        """alpha(t) and d alpha/dt over the band, from the operator (simple) or its fit."""
        s = self.schedule
        span = s.gamma_max - s.gamma_min
        if self.fit is not None:
            out = self.fit(t.double())
            # a polynomial can overshoot [0, 1] or turn the wrong way where T is flat (near
            # alpha = 1 or 0); clamp so the NELBO's weights stay defined and non-negative
            return out.alpha.clamp(1e-6, 1 - 1e-6), out.dalpha.clamp(max=0.0)
        out = self.operator(s.gamma_min + t.double() * span)
        return out.alpha, out.dalpha * span

    def token_loss(self, method, backbone, x0, valid, step: int, t=None, generator=None, clean=None) -> TokenLoss:
        """clean (B, L) bool: positions held clean (a prompt); the network sees their one-hot token."""
        s = self.schedule
        if valid is None:
            valid = torch.ones_like(x0, dtype=torch.float32)
        if t is None:
            t = losses.sample_times(x0.shape[0], generator=generator, eps=0.0, device=x0.device)
        t = t.to(x0.device).reshape(-1, 1)
        gamma = s.gamma_min + t.double() * (s.gamma_max - s.gamma_min)
        alpha, dalpha = (a.to(method.loss_dtype).to(x0.device) for a in self.alpha(t))
        tau = s.tau(step)
        if s.top_k > 0:
            ids, weights, x_t = topk_relaxation(x0, gamma, self.K, s.top_k, tau, generator=generator)
            if clean is not None:  # all the weight on the clean token, first of the k
                hold = clean[..., None]
                first = torch.zeros_like(weights, dtype=torch.bool)
                first[..., 0] = True
                ids = torch.where(hold & first, x0[..., None], ids)
                weights = torch.where(hold, first.to(weights.dtype), weights)
                x_t = torch.where(clean, x0, x_t)
            return method.loss_at(backbone, x_t, x0, t, alpha, dalpha, valid.float(), model_input=ids,
                                  weights=weights)
        (w,) = gaussian_latents(x0, [gamma], self.K, generator=generator)  # (B, L, K)
        if clean is not None:  # a logit far above the rest: the softmax is the clean token's one-hot
            one_hot = torch.nn.functional.one_hot(x0, self.K).to(w.dtype) * (1e4 * tau)
            w = torch.where(clean[..., None], one_hot, w)
        x_t = w.argmax(-1)
        # the DiT softmaxes the tempered latents into a weighted embedding
        return method.loss_at(backbone, x_t, x0, t, alpha, dalpha, valid.float(), model_input=w / tau)


def _distinct_other_ids(x0: torch.Tensor, K: int, k: int, generator=None) -> torch.Tensor:
    """k distinct ids != x_0 per position, a uniformly random ordered subset, (B, L, k)."""
    if k > K - 1:
        raise SettingError(f"`CurriculumSchedule.top_k` ({k}) must be below the vocabulary size ({K})")
    shape = (*x0.shape, k)
    if k * k > K:  # dense vocabularies: a random permutation is cheap enough
        keys = torch.rand((*x0.shape, K - 1), device=x0.device, generator=generator)
        ids = keys.topk(k, dim=-1).indices
    else:
        ids = torch.randint(0, K - 1, shape, device=x0.device, generator=generator)
        while True:  # redraw duplicates; rare when k^2 << K
            srt, order = ids.sort(-1)
            dup = torch.zeros_like(ids, dtype=torch.bool)
            dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
            if not dup.any():
                break
            redraw = torch.randint(0, K - 1, shape, device=x0.device, generator=generator)
            dup_in_place = torch.zeros_like(dup).scatter(-1, order, dup)
            ids = torch.where(dup_in_place, redraw, ids)
    return ids + (ids >= x0[..., None]).long()  # skip x_0 itself


def top_order_statistics(shape, n: int, k: int, sigma: torch.Tensor, generator=None, device=None):
    """The k largest of n iid N(0, sigma^2), in decreasing order, without drawing all n: (..., k).

    Uses the Renyi representation of uniform order statistics: log U_(1) = log V_1 / n,
    log U_(j) = log U_(j-1) + log V_j / (n - j + 1); then z = Phi^-1(U), computed from
    1 - U in log space so the extreme tail keeps its precision.
    """
    v = torch.rand((*shape, k), device=device, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    denom = n - torch.arange(k, device=device, dtype=torch.float64)
    log_u = torch.cumsum(v.log() / denom, dim=-1)           # log U_(j), decreasing
    one_minus_u = -torch.expm1(log_u)                        # 1 - U_(j), tiny for the top ones
    z = -torch.special.ndtri(one_minus_u)                    # Phi^-1(U) = -Phi^-1(1 - U)
    return z * sigma.to(torch.float64)[..., None]


def topk_relaxation(x0: torch.Tensor, gamma: torch.Tensor, K: int, k: int, tau: float, generator=None):
    """Duo++'s efficient input: (ids (B, L, k), weights (B, L, k), x_t = argmax (B, L)).

    The weights are the dense tempered softmax's values for those k tokens: the
    denominator adds the other drawn candidate(s) and the expected mass of the
    K - 1 - k undrawn noise coordinates, each N(0, s^2) truncated below the k-th
    order statistic c: E[exp(v / tau) | v < c] = exp(s^2 / 2 tau^2) Phi((c - s^2/tau)/s) / Phi(c/s).
    """
    B, L = x0.shape
    a, s = (c.to(torch.float64).reshape(B, 1, 1) for c in gaussian_coefficients(gamma.double()))
    noise = top_order_statistics((B, L), K - 1, k, s[..., 0].expand(B, L), generator=generator, device=x0.device)
    true_val = a[..., 0] + s[..., 0] * torch.randn((B, L), device=x0.device, generator=generator,
                                                   dtype=torch.float64)
    other_ids = _distinct_other_ids(x0, K, k, generator)
    vals = torch.cat([true_val[..., None], noise], -1)                # (B, L, k + 1): candidates
    cand_ids = torch.cat([x0[..., None], other_ids], -1)
    order = vals.argsort(-1, descending=True)
    vals = vals.gather(-1, order)
    cand_ids = cand_ids.gather(-1, order)
    x_t = cand_ids[..., 0]                                            # the true argmax of all K
    c = noise[..., -1]                                                # k-th largest noise coordinate
    ss = s[..., 0]
    n_rest = K - 1 - k
    log_tail = (math.log(n_rest) + ss ** 2 / (2 * tau ** 2)
                + torch.special.log_ndtr((c - ss ** 2 / tau) / ss) - torch.special.log_ndtr(c / ss)) \
        if n_rest > 0 else torch.full_like(c, -math.inf)
    logits = vals / tau
    log_den = torch.logsumexp(torch.cat([logits, log_tail[..., None]], -1), -1, keepdim=True)
    weights = (logits[..., :k] - log_den).exp()
    return cand_ids[..., :k], weights.float(), x_t
