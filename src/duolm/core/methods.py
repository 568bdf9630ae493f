"""AR, MDLM, SEDD, D3PM and Duo as compositions of process + schedule + parameterisation + loss.

A method knows nothing of the trainer: it takes a backbone (any module called
as ``backbone(tokens, sigma) -> logits``), clean tokens and times, and returns
per-token losses. Three tables compose it: ``METHODS`` (name -> recipe), ``PARAMETERIZATIONS``
(raw logits -> what the loss and samplers read, and which kind of output that is: next-token
logits, x_0 probabilities or a score) and ``LOSSES`` (that output -> per-token loss). A recipe also
declares what the method supports (``Supports``: blocks, the curriculum, distillation, guidance,
a clipped time range), which the objectives, the samplers and the config ask instead of its name.
A new method is one row of METHODS, plus a row of the others when it brings its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from duolm.contracts import CapabilityError
from duolm.core import losses, parameterizations
from duolm.core.block_attention import block_diffusion_mask, training_positions
from duolm.core.canvas_loss import canvas_token_loss
from duolm.core.chunked_loss import PLAIN_MAX_LOGITS, Head, chunked_loss
from duolm.core.processes import AbsorbingProcess, UniformProcess
from duolm.core.schedules import LogLinear
from duolm.errors import SettingError


@dataclass
class TokenLoss:
    nll: torch.Tensor     # (B, L') per-token loss in nats
    weight: torch.Tensor  # (B, L') 1 where the token counts

    def mean(self) -> torch.Tensor:
        return (self.nll * self.weight).sum() / self.weight.sum().clamp_min(1)


@dataclass
class Method:
    """One discrete language-modelling method.

    name: table key. process: forward process (None for AR). parameterization:
    'ar' | 'subs' | 'mean' | 'score'. loss: 'ar' | 'mdlm' | 'd3pm' | 'uniform' | 'sedd'.
    num_steps: T for discrete-time losses (0 = continuous time).
    fused: compute the output projection and the loss a chunk of tokens at a time
    (duolm.core.chunked_loss), never holding (B, L, K) activations for backward; False is the
    straightforward computation (same numbers; tests compare the two).
    block_size: block diffusion. Each block of the sequence draws its own time; the network reads
    x_t ⊕ x_0 with the block-diffusion mask (duolm.core.block_attention), so a noisy block is
    denoised given the clean blocks before it, and the NELBO is the sum of the blocks' NELBOs.
    """

    name: str
    vocab_size: int
    process: object | None
    schedule: object = field(default_factory=LogLinear)
    parameterization: str = "mean"
    loss: str = "uniform"
    time_conditioning: bool = True
    num_steps: int = 0
    loss_dtype: torch.dtype = torch.float32
    sampling_eps: float = 1e-3
    fused: bool = True
    block_size: int | None = None  # block diffusion (BD3-LM): AR over blocks, diffusion inside; None: one block

    supports: "Supports" = field(default_factory=lambda: Supports())  # what it can be trained and sampled with

    # --- the network's interface -------------------------------------------------
    @property
    def output_kind(self) -> str:
        """What the parameterised output is (its PARAMETERIZATIONS row): 'ar' (next-token logits),
        'x0' (log p(x_0 | x_t)) or 'score' (SEDD's log concrete score)."""
        return PARAMETERIZATIONS[self.parameterization].output

    @property
    def is_autoregressive(self) -> bool:
        """AR: no forward process; the network is causal and predicts the next token."""
        return self.output_kind == "ar"

    @property
    def exact_likelihood(self) -> bool:
        """sequence_nelbo is the exact NLL (AR), not a Monte Carlo draw of a bound: one draw suffices."""
        return self.output_kind == "ar"

    @property
    def model_vocab_size(self) -> int:
        """Width of the network's input and output layers."""
        return self.vocab_size if self.is_autoregressive else self.process.num_states

    @property
    def causal(self) -> bool:
        return self.is_autoregressive

    @property
    def mask_id(self) -> int | None:
        return getattr(self.process, "mask_id", None)

    def sigma(self, alpha: torch.Tensor) -> torch.Tensor | None:
        """The conditioning the backbone receives, (B,): -log(alpha), or zeros without time conditioning."""
        if self.is_autoregressive:
            return None
        alpha = alpha.reshape(alpha.shape[0], -1)
        if not self.time_conditioning:
            return torch.zeros_like(alpha[:, 0])
        # (B,) one level per sequence; (B, L) one per token (block diffusion: each block its own)
        return -torch.log(alpha[:, 0] if alpha.shape[1] == 1 else alpha)

    def denoise(self, backbone, x_t, alpha, *, model_input=None, weights=None) -> torch.Tensor:
        """log p(x_0 | x_t) (or SEDD's log score) for x_t (B, L) at signal level alpha (B,) or (B, 1).

        model_input / weights let the Duo curricula feed soft or weighted inputs
        in place of the tokens x_t, while x_t still defines the parameterisation.
        """
        sigma = self.sigma(alpha)
        logits = backbone(x_t if model_input is None else model_input, sigma, weights=weights)
        return self.read_logits(logits, x_t, alpha)

    def read_logits(self, logits, x_t, alpha) -> torch.Tensor:
        """What the loss and samplers read of a network's raw logits at x_t (its parameterization)."""
        return PARAMETERIZATIONS[self.parameterization].read(self, logits.to(self.loss_dtype), x_t, alpha)

    def check_backbone(self, capabilities) -> None:
        """What this method needs of a backbone (duolm.contracts.Capabilities), refused in one sentence:
        AR reads a causal network; block diffusion runs block-causal masks over x_t + x_0, or reads
        the clean blocks from an encoder's cache (encoder_prefix: DiffusionGemma)."""
        if self.is_autoregressive:
            capabilities.require_attention("causal", "`Method.name`=ar")
        elif capabilities.encoder_prefix:  # the prompt in an encoder's cache, canvases after it
            if self.block_size is None:
                raise CapabilityError(f"`Method.name`={self.name} over a whole sequence needs a backbone that reads one; "
                                      f"this one reads a prompt through its encoder and denoises canvases after it: "
                                      f"set `Method.block_size` to its canvas length")
            capabilities.require_attention("bidirectional", "`Method.block_size`")
        elif self.block_size is not None:
            capabilities.require_attention("block_causal", "`Method.block_size`")
        else:
            capabilities.require_attention("bidirectional", f"`Method.name`={self.name}")

    # --- losses --------------------------------------------------------------------
    def num_blocks(self, length: int) -> int:
        """How many diffusion blocks a sequence of `length` tokens has (1 without block_size)."""
        if self.block_size is None:
            return 1
        if length % self.block_size:
            raise SettingError(f"`Method.block_size` ({self.block_size}) must divide `Method.num_blocks.length` "
                               f"({length})")
        return length // self.block_size

    def sample_times(self, n, *, generator=None, antithetic=True, index=None, total=None, device=None,
                     blocks: int = 1):
        """Training times for n examples (see losses.sample_times), (n,); with blocks > 1 one per
        block, (n, blocks), stratified over every (example, block) of the global batch."""
        if blocks > 1:
            index = torch.arange(n, device=device) if index is None else index
            total = n if total is None else total
            index = (index.to(device)[:, None] * blocks + torch.arange(blocks, device=device)).reshape(-1)
            t = losses.sample_times(n * blocks, generator=generator, antithetic=antithetic, eps=self.sampling_eps,
                                    index=index, total=total * blocks, num_steps=self.num_steps, device=device)
            return t.reshape(n, blocks)
        return losses.sample_times(n, generator=generator, antithetic=antithetic, eps=self.sampling_eps,
                                   index=index, total=total, num_steps=self.num_steps, device=device)

    def token_loss(self, backbone, x0: torch.Tensor, valid: torch.Tensor | None = None,
                   t: torch.Tensor | None = None, generator=None, clean: torch.Tensor | None = None) -> TokenLoss:
        """Per-token training loss of clean tokens x0 (B, L); t (B,), or (B, blocks) with block_size,
        is drawn when not given.

        clean (B, L) bool: positions never noised (a context the continuation is scored given);
        give them weight 0 in `valid`.
        """
        if valid is None:
            valid = torch.ones_like(x0, dtype=torch.float32)
        valid = valid.float()
        if self.is_autoregressive:
            return self._ar_loss(backbone, x0, valid)
        if backbone.capabilities.encoder_prefix:  # the prompt in an encoder's cache, canvases after it
            return TokenLoss(*canvas_token_loss(self, backbone, x0, valid, t, generator=generator, clean=clean))
        blocks = self.num_blocks(x0.shape[1])
        if t is None:
            t = self.sample_times(x0.shape[0], generator=generator, device=x0.device, blocks=blocks)
        t = t.to(x0.device).reshape(x0.shape[0], -1)  # (B, 1), or (B, blocks)
        if blocks > 1:
            t = t.repeat_interleave(self.block_size, dim=1)  # (B, L): each token its block's time
            backbone = BlockTrainingPass(backbone, x0, self.block_size)
        sched = self.schedule(t.to(torch.float64) if self.loss_dtype == torch.float64 else t)
        alpha, dalpha = sched.alpha.to(self.loss_dtype), sched.dalpha.to(self.loss_dtype)
        x_t = self.process.sample_xt(x0, alpha, generator=generator)
        if clean is not None:
            x_t = torch.where(clean, x0, x_t)
        return self.loss_at(backbone, x_t, x0, t, alpha, dalpha, valid)

    def loss_at(self, backbone, x_t, x0, t, alpha, dalpha, valid, *, model_input=None, weights=None) -> TokenLoss:
        """The per-token loss of the backbone's prediction at x_t (B, L); t, alpha, dalpha (B, 1), or
        (B, L) one per token.

        model_input / weights let the curricula feed soft or weighted inputs in place of x_t.
        """
        if not self.fused:
            out = self.denoise(backbone, x_t, alpha, model_input=model_input, weights=weights)
            return TokenLoss(self.loss_from_output(out, x_t, x0, t, alpha, dalpha), valid)
        sigma = self.sigma(alpha)
        inputs = x_t if model_input is None else model_input
        B, L = x_t.shape
        per = [v.expand(B, L).reshape(-1, 1) for v in (t, alpha, dalpha)]  # per token, (N, 1)
        x_t1, x01 = x_t.reshape(-1, 1), x0.reshape(-1, 1)

        def per_token(z, rows):  # z (n, K) -> (n,): each token is a batch row of its own
            tr, ar, dar = (v[rows] for v in per)
            out = PARAMETERIZATIONS[self.parameterization].read(self, z[:, None], x_t1[rows], ar)
            return self.loss_from_output(out, x_t1[rows], x01[rows], tr, ar, dar)[:, 0]

        # the loss's gradient in the logits, where its row writes it out (fewer passes than autograd)
        gradient = LOSSES[self.loss].gradient
        grad_fn = None if gradient is None else gradient(self, x_t1[:, 0], x01[:, 0], per[1][:, 0], per[2][:, 0])
        nll = self.chunked_token_losses(backbone, inputs, sigma, per_token, valid, weights=weights, grad_fn=grad_fn)
        return TokenLoss(nll.reshape(B, L), valid)

    def _ar_loss(self, backbone, x0, valid) -> TokenLoss:
        """Next-token prediction: position i's output scores token i + 1 (no x_t, no time)."""
        # the papers' AR has one more output row (their mask token); it is never a target
        targets = x0[:, 1:]
        param, loss = PARAMETERIZATIONS[self.parameterization].read, LOSSES[self.loss]
        if not self.fused:
            logits = backbone(x0[:, :-1], None)[..., :self.vocab_size]
            out = param(self, logits.to(self.loss_dtype), None, None)
            return TokenLoss(loss.per_token(self, out, None, targets, None, None, None), valid[:, 1:])
        flat = targets.reshape(-1, 1)
        nll = self.chunked_token_losses(
            backbone, x0[:, :-1], None,
            lambda z, rows: loss.per_token(self, param(self, z[:, None], None, None), None, flat[rows], None, None,
                                           None)[:, 0],
            valid[:, 1:], rows=self.vocab_size, grad_fn=loss.gradient(self, None, flat[:, 0], None, None))
        return TokenLoss(nll.reshape(targets.shape), valid[:, 1:])

    def chunked_token_losses(self, backbone, inputs, sigma, per_token, valid, *, weights=None, rows=None,
                             grad_fn=None) -> torch.Tensor:
        """Per-token losses (N,) with the projection and the loss chunked (duolm.core.chunked_loss)."""
        reduction = valid.reshape(-1)
        plain_from = LOSSES[self.loss].plain_from_width

        def head(features, weight, bias):
            if rows is not None:
                weight, bias = weight[:rows], None if bias is None else bias[:rows]
            features = features.reshape(-1, features.shape[-1])
            if plain_from is not None and weight.shape[1] >= plain_from and \
                    features.shape[0] * weight.shape[0] <= PLAIN_MAX_LOGITS:
                return per_token(F.linear(features, weight, bias).to(self.loss_dtype), slice(None))
            return chunked_loss(Head(features, weight, bias), per_token, reduction,
                                dtype=self.loss_dtype, grad_fn=grad_fn)

        if backbone.capabilities.head:
            return backbone(inputs, sigma, weights=weights, head=head)
        logits = backbone(inputs, sigma, weights=weights)  # no linear head to fuse: chunk the loss only
        if rows is not None:
            logits = logits[..., :rows]
        return chunked_loss(Head(logits.reshape(-1, logits.shape[-1])), per_token, reduction, dtype=self.loss_dtype,
                            grad_fn=grad_fn)

    def loss_from_output(self, out, x_t, x0, t, alpha, dalpha) -> torch.Tensor:
        """The per-token loss given the parameterised network output at x_t."""
        return LOSSES[self.loss].per_token(self, out, x_t, x0, t, alpha, dalpha)

    def alpha_s(self, t):
        """The signal level one discrete step (1/T) before t."""
        s = (t - 1.0 / self.num_steps).clamp_min(0.0)  # t >= 1/T by construction; s never below 0
        return self.schedule(s.to(self.loss_dtype)).alpha

    def sequence_nelbo(self, backbone, x0: torch.Tensor, valid: torch.Tensor | None = None, *, generator=None,
                       clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One Monte Carlo draw of each sequence's NELBO in nats, prior term included (exact NLL for
        AR), (B,) float64, and each sequence's number of scored tokens (B,): the one computation
        behind validation, `duolm eval` and continuation likelihoods."""
        terms = self.nelbo_terms(backbone, x0, valid, generator=generator, clean=clean)
        return (terms.nll * terms.weight).sum(-1), terms.weight.sum(-1).double()

    def nelbo_terms(self, backbone, x0: torch.Tensor, valid: torch.Tensor | None = None, *, generator=None,
                    clean: torch.Tensor | None = None) -> TokenLoss:
        """The terms sequence_nelbo sums, per token, float64: each token's loss and its prior term
        (B, L), or AR's (B, L - 1) next-token NLLs of positions 1 .. L - 1, with their weights."""
        out = self.token_loss(backbone, x0, valid, generator=generator, clean=clean)
        prior = self.prior_kl(x0).to(out.nll.device).double()
        return TokenLoss(out.nll.double() + prior, out.weight)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """The NELBO's prior term per token (B, L); zero for AR (its likelihood is exact). The
        process says what a reported NELBO carries (process.nelbo_prior: 0 for absorbing ones)."""
        if self.is_autoregressive:
            return torch.zeros(x0.shape[0], x0.shape[1] - 1)
        alpha_1 = self.schedule(torch.ones(x0.shape[0], 1, dtype=torch.float64)).alpha
        return self.process.nelbo_prior(x0, alpha_1)


class BlockTrainingPass:
    """backbone(x_t, sigma) for block diffusion: one pass over x_t ⊕ x_0 with the block-diffusion mask,
    both halves at positions 0 .. L-1, the clean half at noise level 0; returns the x_t half's
    output (or runs head on the x_t half's features)."""

    def __init__(self, backbone, x0: torch.Tensor, block_size: int):
        self.backbone, self.x0, self.block_size = backbone, x0, block_size

    @property
    def capabilities(self):
        return self.backbone.capabilities

    def __call__(self, x_t, sigma, weights=None, head=None):
        if weights is not None or x_t.dim() != 2:
            raise ValueError("block diffusion reads token ids; Duo's curriculum inputs need the whole sequence")
        L = self.x0.shape[1]
        inputs = torch.cat([x_t, self.x0], dim=1)  # (B, 2L)
        if sigma is not None and sigma.dim() == 2:  # per token: the clean copy is at noise level 0
            sigma = torch.cat([sigma, torch.zeros_like(sigma)], dim=1)
        kwargs = dict(attn_mask=block_diffusion_mask(L, self.block_size, x_t.device),
                      positions=training_positions(L, x_t.device))
        if head is None:
            return self.backbone(inputs, sigma, **kwargs)[:, :L]
        return self.backbone(inputs, sigma, head=lambda f, w, b: head(f[:, :L], w, b), **kwargs)


# --- the tables -----------------------------------------------------------------------------
OUTPUT_KINDS = ("ar", "x0", "score")


@dataclass(frozen=True)
class Parameterization:
    """One row of PARAMETERIZATIONS. read(method, logits (B, L, S), x_t, alpha) -> what the loss and the
    samplers read; output: which kind that is (OUTPUT_KINDS), what a sampler must be able to take."""

    read: Callable
    output: str


PARAMETERIZATIONS = {
    # next-token logits, read as they are (AR has no x_t)
    "ar": Parameterization(lambda m, logits, x_t, alpha: logits, output="ar"),
    "subs": Parameterization(lambda m, logits, x_t, alpha: parameterizations.subs(logits, x_t, m.mask_id), "x0"),
    "mean": Parameterization(lambda m, logits, x_t, alpha: parameterizations.mean(logits, m.mask_id), "x0"),
    "score": Parameterization(lambda m, logits, x_t, alpha: parameterizations.log_score(
        logits, x_t, -torch.log(alpha.reshape(-1))), "score"),
}


@dataclass(frozen=True)
class Loss:
    """One row of LOSSES.

    per_token(method, parameterised output, x_t, x0, t (B, 1), alpha, dalpha) -> per-token loss (B, L).
    gradient(method, x_t (N,), x0 (N,), alpha (N,), dalpha (N,)) -> grad_fn(logits (n, K), rows, weights)
    -> (loss (n,), d sum(weights * loss) / d logits), or None where this method's variant has no written-out
    gradient; the chunked loss (duolm.core.chunked_loss) then takes autograd on each chunk. Each written-out
    gradient is checked against autograd (tests/test_chunked_loss.py).
    """

    per_token: Callable
    gradient: Callable | None = None
    # at a projection this wide or wider the straightforward form measured faster than the chunked one
    # (benchmarks/train_step.py: AR at model=small, H = 768, 0.89-0.93x chunked), so the head runs it
    # plainly unless the batch's logits pass duolm.core.chunked_loss.PLAIN_MAX_LOGITS, the memory the
    # chunking exists to save. None: always chunked (Duo's and MDLM's written-out gradients win at every width)
    plain_from_width: int | None = None


def _uniform_loss(m, out, x_t, x0, t, alpha, dalpha):
    if m.num_steps > 0:
        return losses.uniform_nelbo_discrete(out, x_t, x0, m.alpha_s(t), alpha, m.num_steps, m.process)
    return losses.uniform_nelbo(out, x_t, x0, alpha, dalpha)


def _uniform_gradient(m, x_t, x0, alpha, dalpha):
    """Duo's continuous-time NELBO of the mean parameterisation (c_r r + c_p p + two one-hot terms)."""
    if m.num_steps or m.parameterization != "mean" or m.mask_id is not None:
        return None
    return lambda z, rows, w: losses.uniform_nelbo_and_grad(z, x_t[rows], x0[rows], alpha[rows], dalpha[rows], w)


def _mdlm_gradient(m, x_t, x0, alpha, dalpha):
    """-alpha'/(1 - alpha) * -log p(x_0) on masks, 0 on visible tokens (SUBS copies them)."""
    if m.parameterization != "subs":
        return None
    scale = (-dalpha / (1.0 - alpha)) * (x_t == m.mask_id).to(alpha.dtype)
    return lambda z, rows, w: losses.cross_entropy_and_grad(z, x0[rows], scale[rows], w, exclude=m.mask_id)


def _ar_gradient(m, x_t, x0, alpha, dalpha):
    """The cross-entropy of the next token, scale 1."""
    ones = torch.ones(x0.shape[0], dtype=m.loss_dtype, device=x0.device)
    return lambda z, rows, w: losses.cross_entropy_and_grad(z, x0[rows], ones[rows], w)


LOSSES = {
    "ar": Loss(lambda m, out, x_t, x0, t, alpha, dalpha: losses.ar_nll(out, x0), _ar_gradient, plain_from_width=512),
    "mdlm": Loss(lambda m, out, x_t, x0, t, alpha, dalpha: losses.mdlm_nelbo(out, x_t, x0, alpha, dalpha, m.mask_id),
                 _mdlm_gradient),
    "sedd": Loss(lambda m, out, x_t, x0, t, alpha, dalpha: losses.sedd_score_entropy(out, x_t, x0, alpha, dalpha,
                                                                                     m.mask_id)),
    "uniform": Loss(_uniform_loss, _uniform_gradient),
    "d3pm": Loss(lambda m, out, x_t, x0, t, alpha, dalpha: losses.d3pm_absorbing_nelbo(out, x_t, x0, m.alpha_s(t),
                                                                                       alpha, m.num_steps, m.mask_id)),
}

PROCESSES = {"absorbing": AbsorbingProcess, "uniform": UniformProcess}


@dataclass(frozen=True)
class Supports:
    """What a method can be trained and sampled with; the objectives, the samplers and the config ask
    these, never the method's name.

    blocks: block diffusion (algo.block_size). curriculum: Duo's curriculum (its process is argmax of
    Gaussian diffusion, and the recipe trains with it). distillation: DCD (a uniform-state teacher).
    guidance: classifier-free guidance (mixes x_0 predictions). clipped_times: a training range of
    continuous diffusion times (algo.clip_min / clip_max).
    """

    blocks: bool = False
    curriculum: bool = False
    distillation: bool = False
    guidance: bool = False
    clipped_times: bool = False


def methods_supporting(what: str) -> list[str]:
    """The algos whose recipes support `what`, a field of Supports (for the sentence that refuses the others)."""
    return [name for name, r in METHODS.items() if getattr(r.supports, what)]


@dataclass(frozen=True)
class Recipe:
    """One row of the method table. process: a key of PROCESSES, or None for AR. time: which
    NELBO the loss has: 'continuous' (algo.T = 0), 'discrete' (algo.T >= 1) or 'either'.
    supports: what it can be trained and sampled with."""

    process: str | None
    parameterization: str
    loss: str
    time_conditioning: bool
    time: str = "continuous"
    num_steps: int = 0
    supports: Supports = Supports()

    @property
    def model(self) -> tuple:
        """What defines the trained model (how it is trained, the curriculum, is not part of it)."""
        return self.process, self.parameterization, self.loss, self.time_conditioning, self.time, self.num_steps


# block diffusion: masked (BD3-LM) and uniform-state inside each block; SEDD's score and D3PM's
# discrete-time loss would need their own block samplers and tests. Guidance mixes x_0 predictions,
# which a score model (SEDD) does not give.
_DUO = Supports(blocks=True, distillation=True, guidance=True, clipped_times=True)
METHODS = {
    "ar": Recipe(None, "ar", "ar", time_conditioning=False),
    "mdlm": Recipe("absorbing", "subs", "mdlm", time_conditioning=False,
                   supports=Supports(blocks=True, guidance=True, clipped_times=True)),
    "sedd": Recipe("absorbing", "score", "sedd", time_conditioning=True, supports=Supports(clipped_times=True)),
    "d3pm": Recipe("absorbing", "mean", "d3pm", time_conditioning=True, time="discrete", num_steps=1000,
                   supports=Supports(guidance=True)),
    "duo_base": Recipe("uniform", "mean", "uniform", time_conditioning=True, time="either", supports=_DUO),
    "duo": Recipe("uniform", "mean", "uniform", time_conditioning=True, time="either",
                  supports=replace(_DUO, curriculum=True)),
}
ALGOS = tuple(METHODS)


def same_model(a: str, b: str) -> bool:
    """Whether algos a and b name the same model (duo and duo_base share one: Duo's curriculum
    changes only how it is trained), so a checkpoint of one loads as the other."""
    return a == b or (a in METHODS and b in METHODS and METHODS[a].model == METHODS[b].model)


def build_method(name: str, vocab_size: int, *, schedule=None, num_steps: int | None = None,
                 time_conditioning: bool | None = None, loss_dtype=torch.float32,
                 sampling_eps: float = 1e-3, fused: bool = True, block_size: int | None = None) -> Method:
    """The method named `name` for a tokenizer of vocab_size tokens (num_steps, time_conditioning:
    None keeps the recipe's)."""
    if name not in METHODS:
        raise SettingError(f"`build_method.name` must be one of {list(ALGOS)}, got {name!r}")
    r = METHODS[name]
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0):
        raise SettingError(f"`build_method.num_steps` must be an integer >= 0, got {num_steps!r}")
    if num_steps is not None:
        if r.time == "discrete" and num_steps < 1:
            raise SettingError(f"`build_method.num_steps` must be >= 1 for {name} (a discrete-time NELBO), got {num_steps}")
        if r.time == "continuous" and num_steps != 0:
            raise SettingError(f"`build_method.num_steps` must be 0 for {name} (a continuous-time loss), got {num_steps}")
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise SettingError(f"`Method.block_size` must be null or an integer >= 1, got {block_size!r}")
        if not r.supports.blocks:
            raise SettingError(f"`Method.block_size` is for `build_method.name` in {methods_supporting('blocks')}; block diffusion of "
                             f"{name} is not implemented (got `build_method.name`={name!r})")
    process = None if r.process is None else PROCESSES[r.process](vocab_size)
    return Method(name, vocab_size=vocab_size, process=process, schedule=schedule or LogLinear(),
                  parameterization=r.parameterization, loss=r.loss,
                  time_conditioning=r.time_conditioning if time_conditioning is None or process is None
                  else bool(time_conditioning),
                  num_steps=r.num_steps if num_steps is None else int(num_steps), loss_dtype=loss_dtype,
                  sampling_eps=sampling_eps, fused=fused, block_size=block_size, supports=r.supports)
