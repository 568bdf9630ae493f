"""Confidence-based parallel decoding: commit every token the denoiser is sure of, hold it.

At each step the denoiser proposes a token for every position not yet committed (its argmax, or a
draw) with a confidence, the proposal's probability under p(x_0 | x_t). Every proposal above
`threshold` is committed at once, and at least `min_per_step` of the most confident ones; a
committed token never changes again.

- Masked models (Fast-dLLM's rule, NVlabs/Fast-dLLM): the positions not committed stay masked.
  The step count is a budget: after step i of n at least ceil(free * (i + 1) / n) positions are
  committed, so the run ends within `steps` calls, earlier when the denoiser is confident. With
  threshold 1 nothing passes the threshold (a probability never exceeds 1) and the rule is LLaDA's
  low-confidence remasking (and MaskGIT's confidence order with a linear count schedule): exactly
  the scheduled number per step, the most confident first (tests/test_confidence_sampler.py checks
  it draw for draw against a plain loop).
- Uniform-state models (new here: Fast-dLLM is masked-only): every position holds a token, so the
  not-committed ones follow the ancestral posterior along the usual time grid while committed ones
  are held, like a prompt; once every token is committed the run ends. With threshold 1 and min_per_step 0 nothing is ever committed and the
  sampler is ancestral sampling, draw for draw (tested).

The denoiser sees committed tokens as part of x_t at the step's noise level, as it sees a prompt.

For a whole-sequence masked model, `block_length` decodes the window in generation blocks of that
many positions, left to right (LLaDA's and Fast-dLLM's semi-autoregressive order: a block's
positions are committed before the next block opens; the step budget is split evenly over the
blocks), and `cache` = prefix | dual reuses the keys and values of each block's first call for its
later steps (Fast-dLLM's approximate cache, duolm.sampling.prefix_cache; approximate, and its cost
in sample quality is measured in benchmarks/block_quality.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from duolm.core.randomness import at
from duolm.errors import SettingError
from duolm.io.progress import progress_bar
from duolm.sampling.categorical import categorical_draw, nucleus_log
from duolm.sampling.grids import linear_grid
from duolm.sampling.observers import NOTHING, Observer
from duolm.sampling.prefix_cache import CACHE_MODES, ApproximateCache
from duolm.sampling.spec import SamplerSpec, Setting, SettingsBlock, check_noise_removal

PROPOSALS = ("greedy", "sample")


@dataclass(frozen=True)
class ConfidenceOptions(SettingsBlock):
    """The `sampling.confidence` block."""

    threshold: float = 0.9
    min_per_step: int = 1
    proposal: str = "greedy"
    block_length: int | None = None
    cache: str = "none"

    SETTINGS: ClassVar[dict[str, Setting]] = {
        "threshold": Setting(0.9, "commit every token whose probability exceeds this (1: none by threshold)"),
        "min_per_step": Setting(1, "commit at least this many of the most confident tokens per step"),
        "proposal": Setting("greedy", "greedy (the argmax, Fast-dLLM's) | sample (a draw from p(x_0 | x_t))"),
        "block_length": Setting(None, "masked whole-sequence models: decode the window left to right in blocks "
                                      "of this many positions (null: all at once)"),
        "cache": Setting("none", "none | prefix | dual: Fast-dLLM's approximate cache inside each block "
                                 "(needs block_length)"),
    }

    def __post_init__(self):
        if not isinstance(self.threshold, (int, float)) or not 0 <= self.threshold <= 1:
            raise SettingError(f"`ConfidenceOptions.threshold` must be a probability in [0, 1], got {self.threshold!r}")
        if not isinstance(self.min_per_step, int) or isinstance(self.min_per_step, bool) or self.min_per_step < 0:
            raise SettingError(f"`ConfidenceOptions.min_per_step` must be an integer >= 0, got {self.min_per_step!r}")
        if self.proposal not in PROPOSALS:
            raise SettingError(f"`ConfidenceOptions.proposal` must be one of {list(PROPOSALS)}, got {self.proposal!r}")
        b = self.block_length
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise SettingError(f"`ConfidenceOptions.block_length` must be null or an integer >= 1, got {b!r}")
        if self.cache not in CACHE_MODES:
            raise SettingError(f"`ConfidenceOptions.cache` must be one of {list(CACHE_MODES)}, got {self.cache!r}")
        if self.cache != "none" and b is None:
            raise SettingError("`ConfidenceOptions.cache` reuses keys inside a generation block: set "
                             "`ConfidenceOptions.block_length` too")


def propose(log_p: torch.Tensor, open_: torch.Tensor, proposal: str, draw, generator=None,
            exclude: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and confidence for the open positions (B, L) of log_p (B, L, K): (ids, probability),
    0 / -1 elsewhere. Only the open rows are read, in float64."""
    rows = log_p[open_].to(torch.float64)
    if exclude is not None:
        rows[:, exclude] = -torch.inf
    rows = rows - torch.logsumexp(rows, -1, keepdim=True)
    ids = rows.argmax(-1) if proposal == "greedy" else draw(rows, at(generator, open_), exclude=exclude)
    tokens = torch.zeros(open_.shape, dtype=torch.long, device=log_p.device)
    conf = torch.full(open_.shape, -1.0, dtype=torch.float64, device=log_p.device)
    tokens[open_] = ids
    conf[open_] = rows.gather(-1, ids[:, None])[:, 0].exp()
    return tokens, conf


def to_commit(conf: torch.Tensor, open_: torch.Tensor, threshold: float, need: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the open positions above the threshold and each row's `need` (B,) most confident
    (ties: the earlier position first)."""
    score = torch.where(open_, conf, torch.full_like(conf, -2.0))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return open_ & ((conf > threshold) | (rank < need[:, None]))


@torch.no_grad()
def confidence_sample(denoiser, process, schedule, shape, *, steps: int, threshold: float = 0.9,
                      min_per_step: int = 1, proposal: str = "greedy", noise_removal: str = "greedy",
                      eps: float = 1e-3, p_nucleus: float = 1.0, fixed: tuple | None = None, generator=None,
                      device=None, dtype=torch.float64, disable_progress: bool = True,
                      x_init: torch.Tensor | None = None, observer: Observer = NOTHING,
                      block_length: int | None = None, cache: ApproximateCache | None = None):
    """(B, L) token ids by confidence-based parallel decoding (module docstring); at most `steps`
    denoiser calls on a masked model, `steps` + 1 (the noise-removal call) on a uniform-state one.
    fixed: (mask (B, L) bool, values (B, L)) positions held from the start. block_length and cache:
    masked models only (module docstring). The observer gets every state, then denoiser_calls and
    committed_per_step (the mean over the batch at each step), and with a cache query_positions (per
    sequence, all calls)."""
    check_noise_removal(noise_removal)
    B, L = shape
    draw = categorical_draw(dtype)
    x = process.prior_sample(shape, device=device, generator=generator) if x_init is None else x_init.to(device)
    held = torch.zeros(shape, dtype=torch.bool, device=x.device)
    if fixed is not None:
        held, values = fixed[0].to(x.device), fixed[1].to(x.device)
        x = torch.where(held, values, x)
    masked = process.mask_id is not None
    committed = held.clone()
    per_step: list[float] = []
    observer.step(0, x)
    if masked:
        if block_length is not None and block_length > L:
            block_length = None
        plan = generation_blocks(held, block_length, steps)
        position = torch.arange(L, device=x.device)
        bar = progress_bar(total=steps, disable=disable_progress, desc="sampling")
        for start, end, budget in plan:
            in_block = (position >= start) & (position < end)
            free_b = (~held & in_block).sum(-1)  # (B,) positions this block decodes
            # the noise level a time-conditioned masked model is told: the schedule's at the budget's
            # step (the share of tokens it would have unmasked on average by then)
            grid = linear_grid(budget, eps, final_zero=False)
            for i in range(budget):
                open_ = ~committed & in_block
                if not open_.any():
                    break
                done = (committed & ~held & in_block).sum(-1)
                alpha_t = schedule(grid[i].reshape(1)).alpha.expand(B).to(x.device)
                out = denoiser(x, alpha_t) if cache is None else cache.predict(x, alpha_t, start, end, refresh=i == 0)
                log_p = nucleus_log(out, p_nucleus, dtype)
                tokens, conf = propose(log_p, open_, proposal, draw, generator, exclude=process.mask_id)
                target = torch.ceil(free_b.double() * (i + 1) / budget).long()
                need = (target - done).clamp_min(min_per_step)
                new = to_commit(conf, open_, threshold, need)
                x = torch.where(new, tokens, x)
                committed |= new
                per_step.append(float(new.sum()) / B)
                bar.update(1)
                observer.step(len(per_step), x)
        bar.close()
    else:
        grid = linear_grid(steps, eps, final_zero=noise_removal != "none")
        n = len(grid) - 1
        for i in progress_bar(range(n), disable=disable_progress, desc="sampling"):
            open_ = ~committed
            if not open_.any():  # every token committed: the remaining steps would change nothing
                break
            t, s = grid[i], grid[i + 1]
            alpha_t = schedule(t.reshape(1)).alpha.expand(B).to(x.device)
            log_p = nucleus_log(denoiser(x, alpha_t), p_nucleus, dtype)
            tokens, conf = propose(log_p, open_, proposal, draw, generator)
            new = to_commit(conf, open_, threshold, torch.full((B,), min_per_step, device=x.device))
            if i == n - 1 and noise_removal == "greedy":
                x_new = process.greedy(log_p, x)
            else:
                alpha_s = torch.ones_like(alpha_t) if s == 0 else schedule(s.reshape(1)).alpha.expand(B).to(x.device)
                x_new = process.sample_step(log_p, x, alpha_s, alpha_t, kappa=1.0, draw=draw, generator=generator)
            x = torch.where(committed, x, torch.where(new, tokens, x_new))
            committed |= new
            per_step.append(float(new.sum()) / B)
            observer.step(len(per_step), x)
    observer.report(denoiser_calls=len(per_step), cached_calls=0, committed_per_step=per_step,
                    **({} if cache is None else {"query_positions": cache.query_positions}))
    return x


def generation_blocks(held: torch.Tensor, block_length: int | None, steps: int) -> list[tuple[int, int, int]]:
    """(start, end, steps) of each generation block with a position left to decode, left to right;
    the step budget split evenly over them (the first ones take the remainder)."""
    L = held.shape[1]
    size = block_length or L
    spans = [(a, min(a + size, L)) for a in range(0, L, size)]
    spans = [(a, b) for a, b in spans if not held[:, a:b].all()]
    if not spans:
        return []
    if steps < len(spans):
        raise SettingError(f"`SamplerSpec.steps` ({steps}) must be at least the number of generation blocks "
                         f"({len(spans)}: the window over `ConfidenceOptions.block_length`={block_length})")
    base, extra = divmod(steps, len(spans))
    return [(a, b, base + (j < extra)) for j, (a, b) in enumerate(spans)]


def options_of(spec: SamplerSpec) -> ConfidenceOptions:
    return spec.options if spec.options is not None else ConfidenceOptions()


def from_spec(model, spec: SamplerSpec, shape, *, bos_id: int | None = None, **common):
    """The registry's adapter: sampling.steps is the budget (masked) or the time grid (uniform)."""
    o = options_of(spec)
    masked = model.process.mask_id is not None
    if o.block_length is not None and not masked:
        raise SettingError("`ConfidenceOptions.block_length` is for masked models (mdlm); a uniform-state model "
                         "decodes every position at every step")
    cache = None
    if o.cache != "none":
        if model.method is not None and model.method.block_size is not None:
            raise SettingError("`ConfidenceOptions.cache` is Fast-dLLM's approximate cache for whole-sequence models; "
                             "a block diffusion model (algo.block_size) already samples with its exact cache")
        if model.guided:
            raise SettingError("`ConfidenceOptions.cache` does not keep the unconditional model's keys; "
                             "sample with `GenerationRequest.guidance`=1")
        cache = ApproximateCache(model.method, model.backbone, o.cache, labels=model.labels)
    return confidence_sample(model.denoiser, model.process, model.schedule, shape, steps=spec.steps,
                             threshold=o.threshold, min_per_step=o.min_per_step, proposal=o.proposal,
                             noise_removal=spec.noise_removal, eps=spec.eps, p_nucleus=spec.p_nucleus,
                             dtype=spec.dtype, block_length=o.block_length, cache=cache, **common)


__all__ = ["ConfidenceOptions", "confidence_sample", "from_spec", "propose", "to_commit"]
