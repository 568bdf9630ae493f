"""The contracts the library is written against, as typing.Protocols (checked by tests/test_contracts.py
and tests/test_backbone_contract.py).

- ``Schedule``: the signal level alpha(t) of a discrete diffusion, its derivative, its inverse.
- ``Process``: a forward process over ``num_states`` states (absorbing, uniform).
- ``Denoiser``: what every sampler calls: log p(x_0 | x_t) for tokens x_t at signal level alpha_t.
- ``Backbone``: a network, with one forward signature, and its ``Capabilities``: what it can do,
  declared by its row of duolm.models.backbones.BACKBONES and asked, never guessed.
- ``KVCache``: the keys and values a backbone keeps between calls (length, append, crop, rows,
  positions), implemented by the DiT's cache and by an adapter around transformers' caches.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

import torch

from duolm.errors import SettingError


@runtime_checkable
class Schedule(Protocol):
    name: str
    eps: float

    def __call__(self, t: torch.Tensor):
        """ScheduleOutput(alpha, dalpha) at times t in [0, 1]; alpha(0) = 1, decreasing."""

    def inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        """The time t at which the schedule reaches alpha."""


@runtime_checkable
class Process(Protocol):
    kind: str          # 'absorbing' | 'uniform': a name for reports; behaviour asks the members below
    num_states: int    # the state space, the mask state included
    mask_id: int | None   # the absorbing state, or None (uniform: every state is a token)
    first_hitting: bool   # a token's unmasking time can be drawn up front (duolm.sampling.first_hitting)
    gaussian_dual: bool   # argmax of Gaussian diffusion on the one-hot is this process (Duo's curriculum, DCD)

    def sample_xt(self, x0: torch.Tensor, alpha: torch.Tensor, generator=None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for clean tokens x0 (B, L) at signal level alpha (B,) or (B, 1)."""

    def marginal(self, p_x0: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """q(x_t) for a distribution over x_0, (..., S)."""

    def posterior(self, p_x0: torch.Tensor, x_t: torch.Tensor, alpha_s, alpha_t) -> torch.Tensor:
        """q(x_s | x_t, x_0 ~ p_x0), normalised, (..., S)."""

    def prior_sample(self, shape, device=None, generator=None) -> torch.Tensor:
        """x_1 from the process's limit distribution."""

    def prior_kl(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """KL(q(x_1 | x_0) || prior) per token."""

    def nelbo_prior(self, x0: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """The prior term a reported NELBO carries per token (prior_kl, or 0 where the papers omit it)."""

    def sample_step(self, log_p: torch.Tensor, x_t: torch.Tensor, alpha_s, alpha_t, *, kappa: float = 1.0, draw,
                    generator=None) -> torch.Tensor:
        """x_s for every token: kappa * posterior + (1 - kappa) * predictor-corrector, as a per-token
        mixture; log_p (B, L, S) is the denoiser's log p(x_0 | x_t); draw(rows, generator, exclude=)."""

    def greedy(self, log_p: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The greedy last step: the most likely token where x_t is still noise."""


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x_t: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
        """log p(x_0 | x_t), (B, L, S), for x_t (B, L) long and alpha_t (B,); SEDD's analytic sampler
        takes the log concrete score in its place."""


# --- backbones ---------------------------------------------------------------------------------
ATTENTION_PATTERNS = ("bidirectional", "causal", "block_causal")


class CapabilityError(SettingError):
    """A backbone was asked for something its capabilities do not declare; the message is one sentence
    (what needs it may name a library field, `Type.field`, as every SettingError does)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backbone can do. Its BACKBONES row declares the most its class can do; a built network's
    ``capabilities`` narrow that to its config (a causal DiT reads no noise level, an unconditional
    one no labels). Samplers, objectives and the application ask these fields.

    attention: the patterns forward can run: 'bidirectional' (diffusion over the whole sequence),
        'causal' (AR: only when the network was built causal), 'block_causal' (forward takes an
        explicit ``attn_mask`` and ``positions``: block diffusion's x_t + x_0 pass).
    kv_cache: ``new_cache()`` gives a KVCache that forward extends (``cache=``, ``store_kv=``).
    head: forward(head=f) returns f(features, weight, bias) in place of the logits (the fused loss).
    class_conditioning: forward(class_cond=labels) (label num_classes is the null label).
    soft_inputs: forward reads float inputs (B, L, V) and ids (B, L, k) with ``weights`` (Duo's curriculum).
    time_conditioning: forward reads the noise level sigma (otherwise it is ignored).
    encoder_prefix: a causal encoder reads clean tokens into the cache (forward with ``store_kv=True``;
        ``attn_mask`` (B, L) bool then marks which of them are tokens, the rest padding) and the
        canvas is denoised by a separate pass that reads that cache (``store_kv=False``); it needs a
        cache with at least one token (DiffusionGemma).
    self_conditioning: forward(self_cond=logits) adds the previous step's prediction (B, L, V) to
        the input (DiffusionGemma's self-conditioning block); None: the first step's zero signal.
    training_step: ``set_step(step)`` changes forward during training (annealed attention).
    adapters: it trains adapters (LoRA) over frozen weights; ``merged()`` folds them into a plain network.
    ragged_rows: its cache holds rows of different lengths (``cache.starts``, ``joined``,
        ``trim_padding``, as duolm.models.dit.DiTCache): forward numbers each row's positions from its
        own start and never reads the padding before it, so rows join and leave a running batch
        (continuous batching, duolm.sampling.continuous).
    """

    attention: tuple[str, ...] = ("bidirectional",)
    kv_cache: bool = False
    head: bool = False
    class_conditioning: bool = False
    soft_inputs: bool = False
    time_conditioning: bool = False
    encoder_prefix: bool = False
    self_conditioning: bool = False
    training_step: bool = False
    adapters: bool = False
    ragged_rows: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.attention) - set(ATTENTION_PATTERNS))
        if unknown:
            raise ValueError(f"Capabilities.attention: {unknown[0]!r} is not one of {list(ATTENTION_PATTERNS)}")

    def changed(self, **changes) -> "Capabilities":
        """These capabilities with some fields set otherwise (a table row built on a shared set, or a
        wrapper that uses less of its network)."""
        return replace(self, **changes)

    def within(self, declared: "Capabilities") -> list[str]:
        """The capabilities this claims beyond `declared` (a network beyond its table row), by name."""
        out = [f"attention {a!r}" for a in self.attention if a not in declared.attention]
        return out + [f.name for f in fields(self) if f.name != "attention"
                      and getattr(self, f.name) and not getattr(declared, f.name)]

    def require_attention(self, pattern: str, what: str) -> None:
        """Raise CapabilityError (one sentence naming `what` needs it) unless this runs the attention `pattern`."""
        if pattern not in self.attention:
            raise CapabilityError(f"{what} needs {pattern.replace('_', '-')} attention, which this backbone "
                                  f"does not run (it runs: {', '.join(self.attention)})")

    def require(self, capability: str, what: str) -> None:
        """Raise CapabilityError (one sentence naming `what` needs it) unless this declares `capability`."""
        if not getattr(self, capability):
            raise CapabilityError(f"{what} needs a backbone with {capability.replace('_', ' ')}, which this one "
                                  f"does not declare")


@runtime_checkable
class KVCache(Protocol):
    """The keys and values of earlier positions, one entry per layer, for every row of a batch."""

    def __len__(self) -> int:
        """How many positions are cached."""

    def append(self, k: torch.Tensor, v: torch.Tensor, layer: int, *, keep: bool = True):
        """The layer's cached keys and values followed by k, v (B, heads, S, head_dim), as a pair;
        kept for later calls when `keep` (a committed block), not when a noisy block only reads them."""

    def crop(self, length: int) -> None:
        """Keep the first `length` positions."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep these batch rows, in this order (a batch whose finished rows leave)."""

    def keep_positions(self, index: torch.Tensor) -> "KVCache":
        """A new cache holding only these positions (Fast-dLLM's approximate cache reads around a block)."""


@runtime_checkable
class Backbone(Protocol):
    """A network under duolm's one forward signature.

    forward(x, sigma=None, *, weights=None, class_cond=None, positions=None, position_offset=0,
            attn_mask=None, cache=None, store_kv=True, head=None, self_cond=None)
        -> logits (B, L, V) or head's result

    x: token ids (B, L); with soft_inputs, float logits (B, L, V) or ids (B, L, k) with weights (B, L, k).
    sigma: the noise level (B,) or per position (B, L); read with time_conditioning, else ignored.
    class_cond: labels (B,) with class_conditioning. positions (L,) and attn_mask (L, L_keys) bool
    (True: may attend): block_causal attention. cache: a KVCache from new_cache(), with kv_cache;
    position_offset: where x starts after the cached positions; store_kv: keep x's keys and values.
    head: with head, f(features, weight, bias) in place of the output projection.
    self_cond: with self_conditioning, the previous denoising step's logits (B, L, V).
    """

    config: object

    @property
    def capabilities(self) -> Capabilities:
        """What this network, as configured, can do (within its BACKBONES row)."""

    def forward(self, x, sigma=None, *, weights=None, class_cond=None, positions=None, position_offset: int = 0,
                attn_mask=None, cache=None, store_kv: bool = True, head=None, self_cond=None):
        ...

    def new_cache(self) -> KVCache:
        """An empty KVCache (CapabilityError without kv_cache)."""

    def set_step(self, step: int | None) -> None:
        """The training step (None outside training); a no-op without training_step."""

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters, the input embedding's excluded when asked."""
