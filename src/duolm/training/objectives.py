"""Training objectives: what one training step minimises, behind one call.

    loss = objective.token_loss(backbone, x0, valid, step=step, generator=g)  # -> TokenLoss

`clean` (B, L) bool marks positions held clean (an instruction's prompt): never noised, given to
the network as they are; the caller gives them weight 0 in `valid`, so they carry no loss.

- ``Nelbo``: the method's own loss (AR cross-entropy, MDLM / SEDD / D3PM / uniform-state NELBO).
- ``CurriculumNelbo``: Duo's curriculum (relaxed Gaussian latents) while it is active, then the NELBO.
- ``Distillation``: Discrete Consistency Distillation; owns its frozen teacher and delta schedule.

An objective draws the diffusion times itself (antithetic strata over the global batch when the
caller passes each example's `index` in a batch of `total`), so the Lightning module and the
reproduction benchmark share one definition of a step. Objectives know nothing of the trainer;
``metrics(step)`` is what they would like logged, ``state_dict()`` what a resumed run needs.
"""
from __future__ import annotations

from typing import Protocol

import torch

from duolm.core.conditioning import drop_labels, with_labels
from duolm.core.methods import Method, TokenLoss
from duolm.core.operator import DiffusionTransform
from duolm.errors import SettingError
from duolm.training.distill import Teacher, check_settings, dcd_loss


class Objective(Protocol):
    method: Method
    state_key: str  # where a checkpoint keeps state_dict()

    def token_loss(self, backbone, x0: torch.Tensor, valid: torch.Tensor | None, *, step: int,
                   generator=None, index: torch.Tensor | None = None, total: int | None = None,
                   ema=None, labels: torch.Tensor | None = None, clean: torch.Tensor | None = None) -> TokenLoss: ...

    def metrics(self, step: int) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Nelbo:
    """The method's training loss at times drawn in [eps, 1] (or on its discrete grid).

    Class-conditional training (num_classes > 0) takes each example's label and drops it to the
    null label with probability class_dropout, so one network learns the conditional and the
    unconditional model (classifier-free guidance).
    """

    state_key = "objective"

    def __init__(self, method: Method, *, antithetic: bool = True, num_classes: int = 0, class_dropout: float = 0.0,
                 time_range: tuple[float, float] | None = None):
        self.method, self.antithetic = method, antithetic
        self.num_classes, self.class_dropout = num_classes, class_dropout
        if time_range is not None:
            check_time_range(method, *time_range)
        self.time_range = time_range

    def conditioned(self, backbone, labels, generator=None):
        """The backbone with this step's labels bound (after label dropout)."""
        if labels is None:
            if self.num_classes:
                raise ValueError("a class-conditional objective needs each example's label")
            return backbone
        if not self.num_classes:
            raise ValueError("labels given to an unconditional objective (num_classes = 0)")
        return with_labels(backbone, drop_labels(labels, self.class_dropout, self.num_classes, generator))

    def sample_times(self, x0, generator=None, index=None, total=None) -> torch.Tensor | None:
        if self.method.process is None:
            return None  # AR: no diffusion time
        t = self.method.sample_times(x0.shape[0], antithetic=self.antithetic, device=x0.device, index=index,
                                     total=total, generator=generator, blocks=self.method.num_blocks(x0.shape[1]))
        if self.time_range is not None:  # BD3-LM's clipped range: [eps, 1] mapped onto [lo, hi], strata kept
            lo, hi = self.time_range
            eps = self.method.sampling_eps
            t = lo + (hi - lo) * (t - eps) / (1 - eps)
        return t

    def token_loss(self, backbone, x0, valid, *, step, generator=None, index=None, total=None, ema=None, labels=None,
                   clean=None):
        t = self.sample_times(x0, generator, index, total)
        return self.method.token_loss(self.conditioned(backbone, labels, generator), x0, valid, t, generator=generator,
                                      clean=clean)

    def metrics(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def check_time_range(method: Method, lo, hi) -> None:
    """algo.clip_min / clip_max: a training range of diffusion times inside (0, 1] (BD3-LM's
    clipped schedule, which lowers the loss's variance; validation still scores all of [eps, 1])."""
    if not method.supports.clipped_times or method.num_steps:
        raise SettingError(f"`Nelbo.clip_min`/`Nelbo.clip_max` are for continuous-time diffusion (mdlm, duo_base, sedd), not "
                         f"{method.name}{' with T > 0' if method.num_steps else ''}")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    if not ok or not 0 < lo < hi <= 1:
        raise SettingError(f"`Nelbo.clip_min` and `Nelbo.clip_max` must satisfy 0 < clip_min < clip_max <= 1, got "
                         f"{lo!r} and {hi!r}")


def check_curriculum(method: Method) -> None:
    """Duo's curriculum relaxes the whole sequence at once: not inside block diffusion's blocks."""
    if method.block_size is not None:
        raise SettingError("`Method.block_size` needs `CurriculumSchedule.mode`=none (Duo's curriculum reads the "
                           "whole sequence); `Method.name`=duo_base is Duo without it")


class CurriculumNelbo(Nelbo):
    """Duo's curriculum (duolm.training.curriculum.Curriculum) while active, the plain NELBO after."""

    def __init__(self, method: Method, curriculum, *, antithetic: bool = True, num_classes: int = 0,
                 class_dropout: float = 0.0):
        check_curriculum(method)
        super().__init__(method, antithetic=antithetic, num_classes=num_classes, class_dropout=class_dropout)
        self.curriculum = curriculum

    def token_loss(self, backbone, x0, valid, *, step, generator=None, index=None, total=None, ema=None, labels=None,
                   clean=None):
        if not self.curriculum.schedule.active(step):
            return super().token_loss(backbone, x0, valid, step=step, generator=generator, index=index, total=total,
                                      labels=labels, clean=clean)
        t = self.sample_times(x0, generator, index, total)
        # the curriculum's t lives on its gamma band: stretch the drawn [eps, 1] back to [0, 1]
        eps = self.method.sampling_eps
        t = (t - eps) / (1 - eps)
        return self.curriculum.token_loss(self.method, self.conditioned(backbone, labels, generator), x0, valid, step,
                                          t=t, generator=generator, clean=clean)

    def metrics(self, step: int) -> dict[str, float]:
        s = self.curriculum.schedule
        return {"train/tau": s.tau(step)} if s.active(step) else {}


class Distillation(Nelbo):
    """DCD: the student (the backbone being trained) matches a frozen teacher one step back.

    At each new round of the delta schedule the teacher is refreshed from the student's weights
    (teacher_from='weights') or from their EMA ('ema', which needs `ema` in token_loss).
    """

    state_key = "distill"

    def __init__(self, method: Method, student: torch.nn.Module, *, schedule, kind: str = "kl-bwd",
                 gamma_min: float = -4.0, gamma_max: float = -1.0, teacher_from: str = "weights",
                 dtype=torch.float32, antithetic: bool = True):
        if not method.supports.distillation:
            raise ValueError(f"distillation needs a uniform-state (Duo) teacher, not {method.name}")
        if method.block_size is not None and not student.capabilities.encoder_prefix:
            raise SettingError("distillation of block diffusion models is not implemented (`Method.block_size` must be "
                               "null); of an encoder-prefix model (DiffusionGemma) it is, canvas by canvas")
        check_settings(kind, teacher_from, gamma_min, gamma_max)
        super().__init__(method, antithetic=antithetic)
        self.schedule, self.kind, self.teacher_from, self.dtype = schedule, kind, teacher_from, dtype
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self.operator = DiffusionTransform(method.process.num_states)
        self.teacher = Teacher(student)

    def token_loss(self, backbone, x0, valid, *, step, generator=None, index=None, total=None, ema=None, labels=None,
                   clean=None):
        if labels is not None:
            raise ValueError("distillation of class-conditional models is not supported yet")
        if clean is not None:
            raise ValueError("distillation on instruction records (a prompt held clean) is not supported; distill "
                             "on text data")
        if self.teacher_from == "ema" and ema is None:
            raise SettingError("`Distillation.teacher_from`=ema needs the run's EMA (`EMA.decay` > 0)")
        self.teacher.net.to(x0.device)  # a no-op once there
        self.teacher.maybe_refresh(step, self.schedule, backbone, ema if self.teacher_from == "ema" else None)
        t = self.sample_times(x0, generator, index, total)
        return dcd_loss(self.method, backbone, self.teacher.net, x0, t, self.schedule.delta(step),
                        operator=self.operator, gamma_min=self.gamma_min, gamma_max=self.gamma_max, kind=self.kind,
                        dtype=self.dtype, generator=generator, valid=valid)

    def metrics(self, step: int) -> dict[str, float]:
        return {"train/delta": self.schedule.delta(step)}

    def state_dict(self) -> dict:
        return self.teacher.state_dict()  # the teacher and its round (not a model weight)

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.teacher.load_state_dict(state)
