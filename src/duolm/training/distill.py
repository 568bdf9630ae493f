"""Discrete Consistency Distillation (DCD, Duo's Algorithm 1): the pieces, as pure functions.

A student learns to jump along deterministic Gaussian trajectories mapped through argmax:
with one shared eps, the student sees x_t = argmax(alpha~_t x + sigma~_t eps) and a frozen
teacher sees x_s = argmax(alpha~_s x + sigma~_s eps) at s = t - delta, each conditioned on its
own uniform-state alpha = T(gamma); the loss is a KL between their x_0 predictions. Every
`update_every` steps the teacher is refreshed from the student and delta doubles (or grows
linearly), so later rounds distil longer jumps.

This module holds the mechanics; duolm.training.objectives.Distillation is the training objective built
from them, and `duolm distill` runs it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from duolm.core.canvas_loss import canvas_predictions
from duolm.core.chunked_loss import Head
from duolm.core.methods import PARAMETERIZATIONS, TokenLoss
from duolm.core.operator import DiffusionTransform, gaussian_latents
from duolm.errors import SettingError

KL_KINDS = ("kl-bwd", "kl-fwd")
DELTA_GROWTHS = ("double", "linear")
TEACHER_SOURCES = ("weights", "ema")


def check_settings(kind: str, teacher_from: str, gamma_min: float, gamma_max: float) -> None:
    """The DCD settings that do not need a model (checked again by Distillation)."""
    if kind not in KL_KINDS:
        raise SettingError(f"`Distillation.kind` must be one of {list(KL_KINDS)}, got {kind!r}")
    if teacher_from not in TEACHER_SOURCES:
        raise SettingError(f"`Distillation.teacher_from` must be one of {list(TEACHER_SOURCES)}, got {teacher_from!r}")
    if not gamma_min < gamma_max:
        raise SettingError(f"`Distillation.gamma_min` ({gamma_min}) must be below `Distillation.gamma_max` ({gamma_max})")


@dataclass(frozen=True)
class DeltaSchedule:
    """delta, the teacher's step back, as a function of the training step.

    'double': delta = 2**round / num_steps with round = step // update_every (capped at 1);
    'linear': delta grows from linear_min to linear_max over max_steps.
    """

    num_steps: int = 64
    update_every: int = 10_000
    growth: str = "double"
    linear_min: float = 1e-3
    linear_max: float = 0.25
    max_steps: int = 50_000

    def __post_init__(self):
        if self.growth not in DELTA_GROWTHS:
            raise SettingError(f"`DeltaSchedule.growth` must be one of {list(DELTA_GROWTHS)}, got {self.growth!r}")
        for key, value in (("num_steps", self.num_steps), ("update_every", self.update_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"`DeltaSchedule.{key}` must be an integer >= 1, got {value!r}")

    def round(self, step: int) -> int:
        return step // self.update_every

    def delta(self, step: int) -> float:
        if self.growth == "linear":
            frac = min(1.0, step / max(1, self.max_steps))
            return self.linear_min + frac * (self.linear_max - self.linear_min)
        return min(1.0, 2.0 ** min(self.round(step), 60) / self.num_steps)


class Teacher:
    """A frozen copy of the student, refreshed at each new round (from the weights or their EMA)."""

    def __init__(self, student: torch.nn.Module):
        self.net = copy.deepcopy(student).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.round = 0

    @torch.no_grad()
    def refresh(self, student: torch.nn.Module, ema=None):
        if ema is not None:
            ema.copy_to(self.net)
        else:
            for t, s in zip(self.net.parameters(), student.parameters()):
                t.copy_(s.detach())

    def maybe_refresh(self, step: int, schedule: DeltaSchedule, student, ema=None) -> bool:
        r = schedule.round(step)
        if r != self.round:
            self.refresh(student, ema)
            self.round = r
            return True
        return False

    def state_dict(self) -> dict:
        return {"round": self.round, "weights": self.net.state_dict()}

    def load_state_dict(self, state: dict):
        self.round = state["round"]
        self.net.load_state_dict(state["weights"])


def dcd_loss(method, student, teacher_net, x0: torch.Tensor, t: torch.Tensor, delta: float, *,
             operator: DiffusionTransform, gamma_min: float = -4.0, gamma_max: float = -1.0, kind: str = "kl-bwd",
             dtype=torch.float32, generator=None, valid=None) -> TokenLoss:
    """Per-token DCD loss at times t (B,) in [0, 1] and step back delta.

    t is shifted to t + delta (clipped to 1) so that s = t - delta stays in [0, 1];
    'kl-bwd' is KL(student || teacher), 'kl-fwd' KL(teacher || student).
    """
    if kind not in KL_KINDS:
        raise SettingError(f"`Distillation.kind` must be one of {list(KL_KINDS)}, got {kind!r}")
    t = (t.to(x0.device).double() + delta).clamp(max=1.0)
    s = (t - delta).clamp(min=0.0)
    span = gamma_max - gamma_min
    g_t, g_s = gamma_min + t * span, gamma_min + s * span
    K = method.process.num_states
    w_t, w_s = gaussian_latents(x0, [g_t, g_s], K, generator)  # one eps: the same trajectory
    x_t, x_s = w_t.argmax(-1), w_s.argmax(-1)
    a_t = operator(g_t).alpha.float().reshape(-1, 1)
    a_s = operator(g_s).alpha.float().reshape(-1, 1)
    if valid is None:
        valid = torch.ones_like(x0, dtype=torch.float32)
    valid = valid.float()
    if student.capabilities.encoder_prefix:  # DiffusionGemma: the first token in the encoder, canvases after it
        valid = valid.clone()
        valid[:, :1] = 0.0
        log_student = canvas_predictions(method, student, x0, x_t, a_t).to(dtype).log_softmax(-1)
        with torch.no_grad():
            log_teacher = canvas_predictions(method, teacher_net, x0, x_s, a_s).to(dtype).log_softmax(-1)
        return TokenLoss(_kl(kind, log_student, log_teacher), valid)
    if not method.fused:
        # renormalised in `dtype`, so a float64 KL is a true KL (>= 0) of float32 network outputs
        log_student = method.denoise(student, x_t, a_t).to(dtype).log_softmax(-1)
        with torch.no_grad():
            log_teacher = method.denoise(teacher_net, x_s, a_s).to(dtype).log_softmax(-1)
        return TokenLoss(_kl(kind, log_student, log_teacher), valid)
    with torch.no_grad():  # the teacher's logits, made a chunk at a time inside the student's loss
        teacher = _head_of(teacher_net, x_s, method.sigma(a_s))
    B, L = x0.shape
    x_t1, x_s1 = x_t.reshape(-1, 1), x_s.reshape(-1, 1)
    a_t1, a_s1 = a_t.expand(B, L).reshape(-1, 1), a_s.expand(B, L).reshape(-1, 1)
    param = PARAMETERIZATIONS[method.parameterization].read

    def per_token(z, rows):
        log_student = param(method, z[:, None], x_t1[rows], a_t1[rows]).to(dtype).log_softmax(-1)
        zt = teacher.logits(rows, method.loss_dtype)
        log_teacher = param(method, zt[:, None], x_s1[rows], a_s1[rows]).to(dtype).log_softmax(-1)
        return _kl(kind, log_student, log_teacher)[:, 0]

    nll = method.chunked_token_losses(student, x_t, method.sigma(a_t), per_token, valid)
    return TokenLoss(nll.reshape(B, L).to(dtype), valid)


def _kl(kind: str, log_student: torch.Tensor, log_teacher: torch.Tensor) -> torch.Tensor:
    if kind == "kl-bwd":
        return (log_student.exp() * (log_student - log_teacher)).sum(-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1)


def _head_of(net, x, sigma) -> Head:
    """The network's last features and projection (or, without a linear head, its logits)."""
    if net.capabilities.head:
        return net(x, sigma, head=lambda f, w, b: Head(f.reshape(-1, f.shape[-1]), w, b).for_matmul())
    logits = net(x, sigma)
    return Head(logits.reshape(-1, logits.shape[-1]))
