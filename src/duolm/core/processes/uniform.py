"""Uniform-state diffusion: q(x_t | x_0) = Cat(alpha_t * onehot(x_0) + (1 - alpha_t) / K)."""
from __future__ import annotations

import torch

from duolm.core.processes.absorbing import _expand
from duolm.core.processes.steps import DRAW, NOISE, STAY, expand_level, posterior_or_pc, resolve
from duolm.core.randomness import rand, randint


class UniformProcess:
    kind = "uniform"
    # a token's next change depends on the model's prediction
    first_hitting = False
    mask_id = None  # no mask state: every state is a token
    # argmax of Gaussian diffusion on the one-hot is this process (Duo's duality: curriculum, DCD)
    gaussian_dual = True

    def __init__(self, vocab_size: int):
        self.num_states = vocab_size

    def sample_xt(self, x0: torch.Tensor, alpha: torch.Tensor, generator=None) -> torch.Tensor:
        alpha = _expand(alpha, x0)
        u = torch.rand(x0.shape, device=x0.device, generator=generator)
        noise = torch.randint(0, self.num_states, x0.shape, device=x0.device, generator=generator)
        return torch.where(u < 1.0 - alpha, noise, x0)

    def marginal(self, p_x0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        alpha = _expand(alpha, p_x0[..., 0])[..., None].to(p_x0.dtype)
        return alpha * p_x0 + (1.0 - alpha) / self.num_states

    def posterior(self, p_x0, x_t, alpha_s, alpha_t) -> torch.Tensor:
        """q(x_s | x_t, x_0 ~ p_x0) proportional to q(x_t | x_s) * sum_x0 q(x_s | x_0) p(x_0).

        For one-hot p_x0 this is Bayes' rule; for a predicted distribution it is
        D3PM's and Duo's plug-in reverse step. Normalised explicitly, so it sums
        to one in any precision.
        """
        K = self.num_states
        a_s = _expand(alpha_s, x_t).to(p_x0.dtype)[..., None]
        a_t = _expand(alpha_t, x_t).to(p_x0.dtype)[..., None]
        a_ts = a_t / a_s
        # q(x_t | x_s) = a_ts [x_s = x_t] + (1 - a_ts)/K, so the joint is q_s * (1 - a_ts)/K plus
        # a_ts * q_s(x_t) at x_s = x_t: three passes over the vocabulary instead of a one-hot product
        q_s = a_s * p_x0 + (1.0 - a_s) / K
        base = (1.0 - a_ts) / K
        q_s_xt = torch.gather(q_s, -1, x_t[..., None])
        joint = (q_s * base).scatter_add(-1, x_t[..., None], a_ts * q_s_xt)
        return joint / (base * q_s.sum(-1, keepdim=True) + a_ts * q_s_xt)

    def sample_step(self, log_p, x_t, alpha_s, alpha_t, *, kappa: float = 1.0, draw, generator=None):
        """x_s ~ kappa q(x_s | x_t, p) + (1 - kappa) q(x_s | x_0 ~ q(x_0 | x_t, p)), token by token.

        The posterior (see `posterior`) is a three-way mixture: stay at x_t with mass
        a_ts q_s(x_t), a draw from p with a_s (1 - a_ts) / K, a uniform token with
        (1 - a_s)(1 - a_ts) / K. The predictor-corrector step draws x_0 (a draw from p with
        (1 - a_t) / K, x_t with a_t p(x_t)) and noises it to a_s: kept with a_s, else uniform.
        log_p (B, L, K) log p(x_0 | x_t); draw(rows of log_p, generator) -> ids.
        """
        K = self.num_states
        a_s, a_t = expand_level(alpha_s, x_t), expand_level(alpha_t, x_t)
        p_xt = torch.gather(log_p, -1, x_t[..., None])[..., 0].to(torch.float64).exp()
        u = rand(x_t.shape, generator, device=x_t.device, dtype=torch.float64)
        a_ts = a_t / a_s
        w_draw, w_noise = a_s * (1 - a_ts) / K, (1 - a_s) * (1 - a_ts) / K
        v = u * (w_draw + w_noise + a_ts * (a_s * p_xt + (1 - a_s) / K))
        component = torch.where(v < w_draw, DRAW, torch.where(v < w_draw + w_noise, NOISE, STAY))
        posterior = posterior_or_pc(kappa, x_t, generator)
        if posterior is not None:
            w0 = (1 - a_t) / K
            pc = torch.where(u * (w0 + a_t * p_xt) < w0, DRAW, STAY)  # each token uses u in one branch only
            kept = rand(x_t.shape, generator, device=x_t.device, dtype=torch.float64) < a_s
            component = torch.where(posterior, component, torch.where(kept, pc, NOISE))
        return resolve(x_t, component, log_p, draw,
                       lambda n, g: randint(0, K, (n,), g, device=x_t.device), generator)

    def greedy(self, log_p, x_t):
        """The greedy tail: every token to its most likely x_0."""
        return log_p.argmax(-1)

    def prior_sample(self, shape, device=None, generator=None) -> torch.Tensor:
        return randint(0, self.num_states, shape, generator, device=device)

    def nelbo_prior(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """The prior term of the NELBO, per token: the exact KL (finite for the uniform prior)."""
        return self.prior_kl(x0, alpha_1)

    def prior_kl(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """KL(q(x_1 | x_0) || Uniform), per token; about K a^2 / 2 for small alpha(1) = a."""
        K = self.num_states
        a = _expand(alpha_1, x0).to(torch.float64).expand(x0.shape)
        hi = a + (1 - a) / K
        lo = (1 - a) / K
        kl = torch.xlogy(hi, hi * K) + (K - 1) * torch.xlogy(lo, lo * K)
        return kl.float()
