"""The entropy-bounded sampler (EB-sampler, Ben-Hamu et al. 2025, arXiv 2505.24857), as DiffusionGemma samples.

Each step reads p(x_0 | x_t) at a temperature that falls linearly with the steps left,
T = t_min + (t_max - t_min) * remaining / steps (remaining = steps .. 1, so the last step's
temperature is t_min + (t_max - t_min) / steps, not t_min: transformers' rule, kept), draws a
candidate token everywhere, and keeps the k lowest-entropy positions whose entropies, summed, less
the largest of them, stay within `entropy_bound` (an upper bound on their joint mutual
information, so the k are close to independent); every other position goes back to noise (the
process's prior: uniform tokens, or the mask for a masked model). The state is rebuilt at every
step, so a token kept once may be re-noised later; what carries information between steps is the
self-conditioning of a network that has it (the previous step's tempered logits) and the kept
tokens themselves. A row stops when its argmax has been the same for `stability_threshold` steps
and its mean tempered entropy is below `confidence_threshold`; its output is that argmax.

This is the rule of transformers' DiffusionGemmaGenerationMixin.generate (EntropyBoundSampler,
LinearTemperatureScheduleLogitsProcessor, StableAndConfidentStoppingCriteria), written as one
loop over a window or a block, so every duolm model can use it: masked and uniform-state, whole
sequence and blocks (duolm.sampling.blocks), time-conditioned models being told the noise level
t = remaining / steps. With the same seed it draws what generate() draws, in the same order
(tests/test_diffusion_gemma.py: token for token on tiny random DiffusionGemma configs). It is a
heuristic, not a sampler of the model's distribution (its row says exact=False).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from duolm.errors import SettingError
from duolm.io.progress import progress_bar
from duolm.sampling.observers import NOTHING, Observer
from duolm.sampling.spec import SamplerSpec, Setting, SettingsBlock


@dataclass(frozen=True)
class EntropyBoundOptions(SettingsBlock):
    """The `sampling.entropy_bound` block (defaults: transformers' DiffusionGemma defaults)."""

    bound: float = 0.1
    t_max: float = 0.8
    t_min: float = 0.4
    stability_threshold: int = 1
    confidence_threshold: float = 0.005

    SETTINGS: ClassVar[dict[str, Setting]] = {
        "bound": Setting(0.1, "keep the lowest-entropy tokens whose summed entropy, less the largest, stays "
                              "within this (nats); re-noise the rest"),
        "t_max": Setting(0.8, "the temperature of the first step"),
        "t_min": Setting(0.4, "the temperature the schedule falls towards (the last step's is "
                              "t_min + (t_max - t_min) / steps)"),
        "stability_threshold": Setting(1, "stop a row once its argmax has not changed for this many steps "
                                          "(0: no stability test) ..."),
        "confidence_threshold": Setting(0.005, "... and its mean tempered entropy is below this (nats)"),
    }

    def __post_init__(self):
        for name in ("bound", "confidence_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise SettingError(f"`EntropyBoundOptions.{name}` must be a number > 0, got {v!r}")
        for name in ("t_max", "t_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise SettingError(f"`EntropyBoundOptions.{name}` must be a temperature >= 0, got {v!r}")
        if self.t_max < self.t_min or self.t_max <= 0:
            raise SettingError(f"`EntropyBoundOptions.t_max` must be > 0 and >= `EntropyBoundOptions.t_min` "
                               f"({self.t_min}), got {self.t_max!r}")
        s = self.stability_threshold
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SettingError(f"`EntropyBoundOptions.stability_threshold` must be an integer >= 0, got {s!r}")


def linear_temperature(remaining: int, steps: int, t_min: float, t_max: float) -> float:
    """The temperature with `remaining` of `steps` steps left (remaining = steps first, 1 last)."""
    return t_min + (t_max - t_min) * remaining / steps


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of softmax(logits) at every position, (B, L)."""
    return torch.distributions.Categorical(logits=logits).entropy()


def entropy_bounded(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """(B, L) bool: per row, the lowest-entropy positions whose cumulative entropy less the largest
    of them (the last, in ascending order) is within `bound`; always at least the lowest one."""
    ascending, order = torch.sort(entropy, dim=-1)
    keep = torch.cumsum(ascending, dim=-1) - ascending <= bound
    return torch.scatter(torch.zeros_like(keep), -1, order, keep)


class StableAndConfident:
    """Per row: the argmax unchanged over the last `stability` steps and the mean entropy below
    `confidence`. Called once a step with the step's argmax and tempered logits."""

    def __init__(self, stability: int, confidence: float):
        self.stability, self.confidence = stability, confidence
        self.history = None

    def __call__(self, argmax: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.stability == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self.history is None:
                self.history = torch.full((self.stability, *argmax.shape), -1, dtype=argmax.dtype,
                                          device=argmax.device)
            stable = (self.history == argmax[None]).all(-1).all(0)
            self.history = torch.roll(self.history, shifts=-1, dims=0)
            self.history[-1] = argmax
        return stable & (token_entropy(logits).mean(-1) < self.confidence)


@torch.no_grad()
def entropy_bound_sample(denoiser, process, schedule, shape, *, steps: int,
                         options: EntropyBoundOptions = EntropyBoundOptions(), eps: float = 1e-3,
                         fixed: tuple | None = None, generator=None, device=None, disable_progress: bool = True,
                         observer: Observer = NOTHING, conditioning=None, **_unused):
    """(B, L) token ids by the EB-sampler (module docstring), at most `steps` denoiser calls.

    fixed: (mask, values) positions held throughout. conditioning: the network call's
    self-conditioning (duolm.sampling.blocks.CachedBlock.feed), handed each step's tempered logits
    (a stopped row's last ones), as generate() feeds them. The observer gets every state, then
    denoiser_calls, calls_per_row (the mean over rows of the calls before each stopped) and
    stopped_early (rows)."""
    B, L = shape
    x = process.prior_sample(shape, device=device, generator=generator)
    held = None
    if fixed is not None:
        held, values = fixed[0].to(x.device), fixed[1].to(x.device)
        x = torch.where(held, values, x)
    argmax, previous = x, None
    finished = torch.zeros(B, dtype=torch.bool, device=x.device)
    calls_per_row = torch.zeros(B, dtype=torch.long, device=x.device)
    stop = StableAndConfident(options.stability_threshold, options.confidence_threshold)
    observer.step(0, x)
    calls = 0
    for remaining in progress_bar(range(steps, 0, -1), disable=disable_progress, desc="sampling"):
        calls_per_row += ~finished
        t = torch.tensor([max(remaining / steps, eps)], dtype=torch.float64, device=x.device)
        log_p = denoiser(x, schedule(t).alpha.expand(B).to(x.device))
        if process.mask_id is not None:
            log_p[..., process.mask_id] = -torch.inf
        tempered = log_p.float() / linear_temperature(remaining, steps, options.t_min, options.t_max)
        probs = torch.softmax(tempered, dim=-1, dtype=torch.float32)
        candidate = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, generator=generator).view(B, L)
        new_argmax = tempered.argmax(-1)
        keep = entropy_bounded(token_entropy(tempered), options.bound)
        noise = process.prior_sample(shape, device=x.device, generator=generator)
        new_x = torch.where(keep, candidate, noise)
        if held is not None:
            new_x, new_argmax = torch.where(held, values, new_x), torch.where(held, values, new_argmax)
        if finished.any():  # a stopped row keeps its state and its last logits
            new_argmax = torch.where(finished[:, None], argmax, new_argmax)
            new_x = torch.where(finished[:, None], x, new_x)
            tempered = torch.where(finished[:, None, None], previous, tempered)
        finished |= stop(new_argmax, tempered)
        x, argmax, previous = new_x, new_argmax, tempered
        if conditioning is not None:
            conditioning.feed(tempered)
        calls += 1
        observer.step(calls, argmax)
        if finished.all():
            break
    observer.report(denoiser_calls=calls, cached_calls=0, calls_per_row=float(calls_per_row.double().mean()),
                    stopped_early=int(finished.sum()))
    return argmax


def options_of(spec: SamplerSpec) -> EntropyBoundOptions:
    return spec.options if spec.options is not None else EntropyBoundOptions()


def from_spec(model, spec: SamplerSpec, shape, *, bos_id: int | None = None, **common):
    """The registry's adapter: sampling.steps is the most denoiser calls (generate()'s max_denoising_steps)."""
    return entropy_bound_sample(model.denoiser, model.process, model.schedule, shape, steps=spec.steps,
                                options=options_of(spec), eps=spec.eps, conditioning=model.conditioning, **common)


__all__ = ["EntropyBoundOptions", "StableAndConfident", "entropy_bound_sample", "entropy_bounded", "from_spec",
           "linear_temperature", "token_entropy"]
