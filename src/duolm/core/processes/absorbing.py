"""Absorbing (masked) diffusion: each token is replaced by MASK with probability 1 - alpha_t."""
from __future__ import annotations

import torch

from duolm.core.processes.steps import DRAW, NOISE, STAY, expand_level, posterior_or_pc, resolve
from duolm.core.randomness import rand


def _expand(alpha: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Append trailing singleton dims so alpha (B,) / (B, 1) broadcasts against like."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64 if like.dtype == torch.float64 else None)
    while alpha.ndim < like.ndim:
        alpha = alpha.unsqueeze(-1)
    return alpha


class AbsorbingProcess:
    kind = "absorbing"
    # a mask's unmasking time does not depend on the model, so a run whose
    # denoiser ignores t can draw it up front (duolm.sampling.first_hitting)
    first_hitting = True
    gaussian_dual = False

    def __init__(self, vocab_size: int, mask_id: int | None = None):
        """vocab_size counts the data tokens; the mask is an extra state unless mask_id names one."""
        self.mask_id = vocab_size if mask_id is None else mask_id
        self.num_states = vocab_size + 1 if mask_id is None else vocab_size

    def sample_xt(self, x0: torch.Tensor, alpha: torch.Tensor, generator=None) -> torch.Tensor:
        alpha = _expand(alpha, x0).to(torch.float32 if alpha.dtype != torch.float64 else alpha.dtype)
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        return torch.where(u < 1.0 - alpha, torch.full_like(x0, self.mask_id), x0)

    def marginal(self, p_x0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha = _expand(alpha, p_x0[..., 0])[..., None]
        out = alpha * p_x0
        out[..., self.mask_id] = out[..., self.mask_id] + (1.0 - alpha[..., 0])
        return out

    def posterior(self, p_x0, x_t, alpha_s, alpha_t) -> torch.Tensor:
        """q(x_s | x_t, x_0 ~ p_x0). Unmasked x_t stays; a mask unmasks to x_0 w.p. (a_s - a_t)/(1 - a_t).

        p_x0's mass on the mask state (an unprocessed softmax has some) is dropped
        and the rest renormalised, so the result always sums to one; the papers'
        code requires float64 and a pre-masked input for this.
        """
        p = p_x0.clone()
        p[..., self.mask_id] = 0.0
        p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        a_s = _expand(alpha_s, x_t).to(p.dtype)[..., None]
        a_t = _expand(alpha_t, x_t).to(p.dtype)[..., None]
        unmask = (a_s - a_t) / (1.0 - a_t)
        out = unmask * p
        out[..., self.mask_id] = (1.0 - unmask)[..., 0]
        stay = torch.nn.functional.one_hot(x_t, self.num_states).to(p.dtype)
        is_masked = (x_t == self.mask_id)[..., None]
        return torch.where(is_masked, out, stay)

    def sample_step(self, log_p, x_t, alpha_s, alpha_t, *, kappa: float = 1.0, draw, generator=None):
        """x_s ~ kappa q(x_s | x_t, p) + (1 - kappa) q(x_s | x_0 ~ q(x_0 | x_t, p)), token by token.

        Posterior: a visible token stays; a mask unmasks with (a_s - a_t) / (1 - a_t) to a draw
        from p (its mass on the mask dropped). Predictor-corrector (ReMDM's remasking): every
        mask draws x_0 from p, then each token is kept with a_s, else masked.
        """
        a_s, a_t = expand_level(alpha_s, x_t), expand_level(alpha_t, x_t)
        masked = x_t == self.mask_id
        u = rand(x_t.shape, generator, device=x_t.device, dtype=torch.float64)
        component = torch.where(masked & (u < (a_s - a_t) / (1 - a_t)), DRAW, STAY)
        posterior = posterior_or_pc(kappa, x_t, generator)
        if posterior is not None:
            pc = torch.where(masked, DRAW, STAY)
            kept = rand(x_t.shape, generator, device=x_t.device, dtype=torch.float64) < a_s
            component = torch.where(posterior, component, torch.where(kept, pc, NOISE))
        return resolve(x_t, component, log_p, draw, lambda n, g: torch.full((n,), self.mask_id, device=x_t.device),
                       generator, exclude=self.mask_id)

    def greedy(self, log_p, x_t):
        """The greedy tail: every mask to its most likely x_0; visible tokens stay."""
        masked = x_t == self.mask_id
        rows = log_p[masked]  # only the masks' rows
        rows[:, self.mask_id] = -torch.inf
        x = x_t.clone()
        x[masked] = rows.argmax(-1)
        return x

    def prior_sample(self, shape, device=None, generator=None) -> torch.Tensor:
        """All mask: deterministic, so the generator is unused (the contract takes one for every process)."""
        return torch.full(shape, self.mask_id, dtype=torch.long, device=device)

    def nelbo_prior(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """The prior term a reported NELBO carries, per token: 0. The exact term (prior_kl) is
        infinite whenever alpha(1) > 0 (the default schedules end at alpha = eps); like the papers
        we report the NELBO without it, a bound on the model that starts from q(x_1 | x_0)'s
        mask-or-keep marginal."""
        return torch.zeros(x0.shape, dtype=torch.float32, device=x0.device)

    def prior_kl(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """KL(q(x_1 | x_0) || all-mask prior), per token.

        It is 0 when alpha(1) = 0 and infinite otherwise, because the all-mask
        prior gives no mass to the tokens still visible at t = 1. The papers
        (and the default schedules, alpha(1) = eps) omit it; the bound is then
        exact only in the eps -> 0 limit, which the tests use.
        """
        a1 = _expand(alpha_1, x0)
        inf = torch.full(x0.shape, float("inf"), device=x0.device)
        return torch.where(a1 > 0, inf, torch.zeros_like(inf))
