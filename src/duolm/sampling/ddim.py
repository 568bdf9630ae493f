"""Discrete DDIM for uniform-state models, with the leave-one-out Gibbs corrector: diffusers' DiscreteDDIMScheduler.

Each predictor step draws one clean token x_0 per position from the denoiser (its argmax at
temperature 0) and then x_s from the uniform posterior given that token, q(x_s | x_t, x_0), on the
grid alpha = i / n (i = 0 .. n - 1, alpha_s = (i + 1) / n, so the last step commits x_0): the
posterior's three routes, to x_0, stay at x_t, or to a uniform token, have masses
    clean  alpha_s (1 - a) / K + a alpha_s [x_t = x_0],   stay  a (1 - alpha_s) / K,
    noise  (1 - a)(1 - alpha_s) / K,                        a = alpha_t / alpha_s.
Drawing x_0 first makes the step a draw from the mixture sum_y p(y | x_t) q(x_s | x_t, y), which is
not Duo's reverse step (duolm's ancestral row plugs the probabilities into the posterior's
formula; tests/test_diffusion_gemma.py writes both out): another valid reverse model.

The corrector (Uniform Diffusion Models Revisited, arXiv 2605.22765) runs `corrector_steps`
sweeps after each of the first predictor steps: the denoiser's output at the new state is turned
into the leave-one-out denoiser by taking log(1 + K alpha_s / (1 - alpha_s)) off the observed
token's logit, the one-coordinate conditional Cat(alpha_s x0_loo + (1 - alpha_s) / K) is formed, the
`corrector_k` least confident positions (Gumbel-top-k on a confidence score) are redrawn from it,
the rest held. With a budget of `steps` calls, (steps - 1) // (1 + corrector_steps) predictor steps
are corrected and the predictor gets the rest. A row stops once its argmax has been stable for
`stability_threshold` steps and its mean entropy is below `confidence_threshold` (None: never);
its state is then its argmax.

With the same generator this draws what diffusers' DiffusionGemmaPipeline draws with that scheduler,
in the same order (tests/test_diffusion_gemma.py). Uniform-state models only; as a row of the
sampler table it runs on any of them, whole-sequence or in blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from duolm.errors import SettingError
from duolm.sampling.entropy_bound import token_entropy
from duolm.sampling.observers import NOTHING, Observer
from duolm.sampling.spec import SamplerSpec, Setting, SettingsBlock

SELECTIONS = ("lowest_log_margin", "lowest_maxprob", "lowest_current_prob", "random")


@dataclass(frozen=True)
class DDIMOptions(SettingsBlock):
    """The `sampling.ddim` block (defaults: diffusers' DiscreteDDIMScheduler and pipeline defaults)."""

    temperature: float = 0.0
    corrector_steps: int = 0
    corrector_k: int = 1
    corrector_selection: str = "lowest_log_margin"
    corrector_tau: float = 1.0
    stability_threshold: int = 1
    confidence_threshold: float | None = 0.005

    SETTINGS: ClassVar[dict[str, Setting]] = {
        "temperature": Setting(0.0, "the clean token's draw: 0 takes the argmax"),
        "corrector_steps": Setting(0, "leave-one-out Gibbs sweeps after each corrected predictor step (0: none)"),
        "corrector_k": Setting(1, "positions redrawn per sweep"),
        "corrector_selection": Setting("lowest_log_margin", "which positions a sweep redraws: lowest_log_margin | "
                                                            "lowest_maxprob | lowest_current_prob | random"),
        "corrector_tau": Setting(1.0, "the temperature of the Gumbel-top-k choice of positions"),
        "stability_threshold": Setting(1, "stop a row once its argmax has not changed for this many steps ..."),
        "confidence_threshold": Setting(0.005, "... and its mean entropy is below this (nats; null: never stop)"),
    }

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise SettingError(f"`DDIMOptions.temperature` must be a number >= 0, got {t!r}")
        for name, least in (("corrector_steps", 0), ("corrector_k", 1), ("stability_threshold", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise SettingError(f"`DDIMOptions.{name}` must be an integer >= {least}, got {v!r}")
        if self.corrector_selection not in SELECTIONS:
            raise SettingError(f"`DDIMOptions.corrector_selection` must be one of {list(SELECTIONS)}, "
                               f"got {self.corrector_selection!r}")
        if isinstance(self.corrector_tau, bool) or not isinstance(self.corrector_tau, (int, float)) \
                or self.corrector_tau <= 0:
            raise SettingError(f"`DDIMOptions.corrector_tau` must be a number > 0, got {self.corrector_tau!r}")
        c = self.confidence_threshold
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0):
            raise SettingError(f"`DDIMOptions.confidence_threshold` must be null or a number > 0, got {c!r}")


def step_counts(steps: int, corrector_steps: int) -> tuple[int, int]:
    """(predictor steps, corrected predictor steps) for a budget of `steps` denoiser calls."""
    corrected = (steps - 1) // (1 + corrector_steps) if corrector_steps else 0
    return steps - corrected * corrector_steps, corrected


def clean_draw(log_p: torch.Tensor, temperature: float, generator=None) -> torch.Tensor:
    """One x_0 token per position: the argmax at temperature 0, else a draw at that temperature."""
    if temperature == 0:
        return log_p.argmax(-1)
    flat = log_p.reshape(-1, log_p.shape[-1]).float()
    probs = torch.softmax(flat / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).view(log_p.shape[:-1])


def posterior_routes(x_t, x0, alpha_t: float, alpha_s: float, K: int, generator=None) -> torch.Tensor:
    """x_s ~ q(x_s | x_t, x_0) of the uniform process, by its three routes (module docstring)."""
    a = alpha_t / alpha_s
    same = (x_t == x0).float()
    clean = alpha_s * (1 - a) / K + a * alpha_s * same
    stay = a * (1 - alpha_s) / K * torch.ones_like(same)
    noise = (1 - a) * (1 - alpha_s) / K * torch.ones_like(same)
    routes = torch.stack([clean, stay, noise], -1)
    routes = routes / routes.sum(-1, keepdim=True)
    route = torch.multinomial(routes.view(-1, 3), 1, generator=generator).view_as(x_t)
    uniform = torch.randint(0, K, x_t.shape, device=x_t.device, generator=generator)
    return torch.where(route == 2, uniform, torch.where(route == 0, x0, x_t))


def leave_one_out_conditional(log_p: torch.Tensor, x: torch.Tensor, alpha_s: float) -> torch.Tensor:
    """log p_s(x^l | x^{-l}) = log Cat(alpha_s x0_loo + (1 - alpha_s) / K), float64, (B, L, K)."""
    K = log_p.shape[-1]
    logits = log_p.double()
    if 0.0 < alpha_s < 1.0:
        logits = logits.clone()
        shift = torch.full((*x.shape, 1), -math.log1p(K * alpha_s / (1.0 - alpha_s)), dtype=logits.dtype,
                           device=logits.device)
        logits.scatter_add_(-1, x[..., None], shift)
    loo = torch.log_softmax(logits, -1)
    return torch.logaddexp(math.log(alpha_s) + loo, torch.full_like(loo, math.log1p(-alpha_s) - math.log(K)))


def corrector_positions(x, cond: torch.Tensor, options: DDIMOptions, generator=None) -> torch.Tensor:
    """(B, k) positions to redraw: the least confident by the chosen score, Gumbel-top-k at corrector_tau."""
    B, L = x.shape
    k = min(options.corrector_k, L)
    if options.corrector_selection == "random":
        return torch.topk(torch.rand(B, L, device=x.device, generator=generator), k=k, dim=-1).indices
    current = cond.gather(-1, x[..., None])[..., 0]
    if options.corrector_selection == "lowest_maxprob":
        doubt = -cond.max(-1).values
    elif options.corrector_selection == "lowest_current_prob":
        doubt = -current
    else:  # lowest_log_margin
        others = cond.clone().scatter_(-1, x[..., None], float("-inf"))
        doubt = -(current - others.max(-1).values)
    u = torch.rand(doubt.shape, device=doubt.device, generator=generator).clamp_(1e-12, 1.0 - 1e-12)
    return torch.topk(doubt / options.corrector_tau - torch.log(-torch.log(u)), k=k, dim=-1).indices


def corrector_sweep(log_p, x, alpha_s: float, options: DDIMOptions, generator=None) -> torch.Tensor:
    """x with its least confident positions redrawn from the leave-one-out conditional."""
    cond = leave_one_out_conditional(log_p, x, alpha_s)
    where = corrector_positions(x, cond, options, generator)
    rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(where)
    probs = cond[rows, where].exp()
    drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view_as(where)
    out = x.clone()
    out[rows, where] = drawn
    return out


@torch.no_grad()
def ddim_sample(denoiser, process, schedule, shape, *, steps: int, options: DDIMOptions = DDIMOptions(),
                fixed: tuple | None = None, generator=None, device=None, disable_progress: bool = True,
                observer: Observer = NOTHING, conditioning=None, **_unused):
    """(B, L) ids by discrete DDIM (module docstring), `steps` denoiser calls at most. conditioning:
    a self-conditioned network call, fed the predictor's logits before every call (the corrector's
    own logits are not fed), as diffusers' pipeline does."""
    if process.mask_id is not None:
        raise SettingError("`SamplerSpec.predictor`=ddim is the uniform-state posterior (diffusers' "
                           "DiscreteDDIMScheduler); a masked model samples with ancestral or confidence")
    B, L = shape
    K = process.num_states
    x = process.prior_sample(shape, device=device, generator=generator)
    held = None
    if fixed is not None:
        held, values = fixed[0].to(x.device), fixed[1].to(x.device)
        x = torch.where(held, values, x)
    n, corrected = step_counts(steps, options.corrector_steps)
    finished = torch.zeros(B, dtype=torch.bool, device=x.device)
    argmax = x
    history = torch.full((options.stability_threshold, B, L), -1, dtype=torch.long, device=x.device)
    observer.step(0, x)
    calls = 0

    def predict(state):
        nonlocal calls
        calls += 1
        # the schedule's alpha at this grid point: t = 1 - alpha (linear), read by a time-conditioned network
        return denoiser(state, schedule(torch.tensor([1.0 - alpha_t], dtype=torch.float64)).alpha.expand(B)
                        .to(state.device))

    for i in range(n):
        alpha_t, alpha_s = i / n, (i + 1) / n
        log_p = predict(x)
        x0 = clean_draw(log_p, options.temperature, generator)
        x = posterior_routes(x, x0, alpha_t, alpha_s, K, generator)
        if held is not None:
            x = torch.where(held, values, x)
        if i < corrected:
            for _ in range(options.corrector_steps):
                if conditioning is not None:
                    conditioning.feed(log_p)
                x = corrector_sweep(predict(x), x, alpha_s, options, generator)
                if held is not None:
                    x = torch.where(held, values, x)
            if conditioning is not None:
                conditioning.feed(log_p)
        observer.step(i + 1, x)
        if options.confidence_threshold is not None:
            new_argmax = torch.where(finished[:, None], argmax, log_p.argmax(-1))
            stable = (history == new_argmax[None]).all(-1).all(0)
            history = torch.roll(history, shifts=-1, dims=0)
            history[-1] = new_argmax
            finished |= stable & (token_entropy(log_p.float()).mean(-1) < options.confidence_threshold)
            argmax = new_argmax
            x = torch.where(finished[:, None], argmax, x)
            if bool(finished.all()):
                break
    observer.report(denoiser_calls=calls, cached_calls=0, stopped_early=int(finished.sum()))
    return x


def options_of(spec: SamplerSpec) -> DDIMOptions:
    return spec.options if spec.options is not None else DDIMOptions()


def from_spec(model, spec: SamplerSpec, shape, *, bos_id: int | None = None, **common):
    """The registry's adapter: sampling.steps is the budget of denoiser calls (the pipeline's num_inference_steps)."""
    return ddim_sample(model.denoiser, model.process, model.schedule, shape, steps=spec.steps,
                       options=options_of(spec), conditioning=model.conditioning, **common)


__all__ = ["DDIMOptions", "corrector_sweep", "ddim_sample", "from_spec", "leave_one_out_conditional",
           "posterior_routes", "step_counts"]
