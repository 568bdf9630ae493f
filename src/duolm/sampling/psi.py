"""Psi-samplers: each step mixes the posterior with a predictor-corrector step.

    x_s ~ kappa * q(x_s | x_t, x0_hat) + (1 - kappa) * q(x_s | x_0 ~ q(x_0 | x_t, x0_hat))

kappa = 1 everywhere is ancestral sampling (``ancestral_sample`` is this loop
with kappa = 1). Also here: nucleus filtering of x0_hat, MDLM's cache of the
denoiser output when no token changed, and positions held fixed.

Each step is drawn token by token as a mixture (process.sample_step): stay, a draw
from x0_hat, or noise; only the tokens that draw read their row of x0_hat, in float64
(duolm.sampling.categorical). An absorbing model whose denoiser ignores t runs
ancestral sampling with the cache by first-hitting times (duolm.sampling.first_hitting).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Mapping

import torch

from duolm.errors import SettingError
from duolm.io.progress import progress_bar
from duolm.sampling.categorical import categorical_draw, nucleus, nucleus_log
from duolm.sampling.first_hitting import first_hitting_sample
from duolm.sampling.grids import linear_constant_linear_grid, linear_grid
from duolm.sampling.kappa import KappaSchedule, parse_kappa
from duolm.sampling.observers import NOTHING, Observer
from duolm.sampling.spec import SamplerSpec, Setting, check_noise_removal

TIME_PROFILES = ("linear", "linear-constant-linear")
_MODES = "pure-posterior | pure-pc | constant-<k> | constant-remdm-<eta> | max-capped-<eta> | max-rescale-<eta>"


@dataclass(frozen=True)
class PsiOptions:
    """The `sampling.psi` block: the time grid's profile and the kappa schedule over its parts."""

    time_profile: str = "linear"
    plateau: float = 0.1
    plateau_in: str = "t"
    kappa: KappaSchedule = field(default_factory=KappaSchedule)

    SETTINGS: ClassVar[dict[str, Setting]] = {
        "time_profile": Setting("linear", "linear | linear-constant-linear"),
        "plateau": Setting(0.1, "the constant part's time (or signal level, with plateau_in=alpha)"),
        "plateau_in": Setting("t", "t | alpha"),
        "high_mode": Setting("pure-posterior", _MODES),
        "middle_mode": Setting("pure-posterior", "as high_mode"),
        "low_mode": Setting("pure-posterior", "as high_mode"),
        "high_frac": Setting(0.2, "share of the steps in the high-noise part"),
        "middle_frac": Setting(0.6, "share of the steps in the middle part"),
    }

    def __post_init__(self):
        if self.time_profile not in TIME_PROFILES:
            raise SettingError(f"`PsiOptions.time_profile` must be one of {list(TIME_PROFILES)}, "
                             f"got {self.time_profile!r}")
        if self.plateau_in not in ("t", "alpha"):
            raise SettingError(f"`PsiOptions.plateau_in` must be one of ['t', 'alpha'], got {self.plateau_in!r}")
        if self.plateau_in == "alpha" and not 0 < self.plateau < 1:
            raise SettingError(f"`PsiOptions.plateau` must be a signal level in (0, 1) with plateau_in=alpha, "
                             f"got {self.plateau}")

    @classmethod
    def from_settings(cls, settings: Mapping) -> "PsiOptions":
        s = {k: settings.get(k, v.default) for k, v in cls.SETTINGS.items()}
        kappa = KappaSchedule(parse_kappa(s["high_mode"]), parse_kappa(s["middle_mode"]),
                              parse_kappa(s["low_mode"]), s["high_frac"], s["middle_frac"])
        return cls(s["time_profile"], s["plateau"], s["plateau_in"], kappa)

    def describe(self) -> dict:
        return asdict(self)


@torch.no_grad()
def psi_sample(denoiser, process, schedule, shape, *, grid: torch.Tensor, kappas: torch.Tensor | None = None,
               kappa: KappaSchedule | None = None, noise_removal: str = "greedy", p_nucleus: float = 1.0, fixed: tuple | None = None,
               cache: bool = False, generator=None, device=None, dtype=torch.float64,
               disable_progress: bool = True, x_init: torch.Tensor | None = None, observer: Observer = NOTHING):
    """Run the sampler over `grid` (n + 1 times from 1 down; n denoiser calls at most).

    kappas: (n,) mixing weights, one per step (None: all 1, ancestral); or kappa, a KappaSchedule
    over the updates, whose noise-removal call (the last, when noise_removal is not 'none')
    is posterior-only. fixed: (mask (B, L) bool,
    values (B, L)) positions held at given tokens throughout. cache: reuse the
    denoiser output while x_t is unchanged (only valid when the denoiser ignores
    alpha_t, as MDLM's does); the observer gets every state and the number of calls made and saved.
    """
    check_noise_removal(noise_removal)
    n = len(grid) - 1
    if kappa is not None:
        if kappas is not None:
            raise ValueError("give kappas or kappa, not both")
        kappas = schedule_kappas(kappa, grid, schedule, noise_removal)
    if kappas is not None:
        if len(kappas) != n:
            raise ValueError(f"{len(kappas)} kappas for a grid of {n} steps")
        if (kappas < 0).any() or (kappas > 1).any():
            raise ValueError("every kappa must lie in [0, 1]")
    if cache and process.first_hitting and (kappas is None or bool((kappas == 1).all())):
        return first_hitting_sample(denoiser, process, schedule, shape, grid=grid, noise_removal=noise_removal,
                                    p_nucleus=p_nucleus, fixed=fixed, generator=generator, device=device,
                                    dtype=dtype, disable_progress=disable_progress, x_init=x_init,
                                    observer=observer)
    B = shape[0]
    draw = categorical_draw(dtype)
    if x_init is not None:
        x = x_init.to(device)
    else:
        x = process.prior_sample(shape, device=device, generator=generator)
    if fixed is not None:
        fmask, fvals = fixed[0].to(device), fixed[1].to(device)
        x = torch.where(fmask, fvals, x)
    calls = saved = 0
    log_p = prev_x = None
    observer.step(0, x)
    for i in progress_bar(range(n), disable=disable_progress, desc="sampling"):
        t, s = grid[i], grid[i + 1]
        alpha_t = schedule(t.reshape(1)).alpha.expand(B).to(device)
        if cache and log_p is not None and torch.equal(x, prev_x):
            saved += 1
        else:
            log_p = nucleus_log(denoiser(x, alpha_t), p_nucleus, dtype)
            calls += 1
        prev_x = x
        if i == n - 1 and noise_removal == "greedy":
            x_new = process.greedy(log_p, x)
        else:
            alpha_s = torch.ones_like(alpha_t) if s == 0 else schedule(s.reshape(1)).alpha.expand(B).to(device)
            x_new = process.sample_step(log_p, x, alpha_s, alpha_t, kappa=1.0 if kappas is None else float(kappas[i]),
                                        draw=draw, generator=generator)
        if fixed is not None:
            x_new = torch.where(fmask, fvals, x_new)
        x = x_new
        observer.step(i + 1, x)
    observer.report(denoiser_calls=calls, cached_calls=saved)
    return x


def schedule_kappas(kappa: KappaSchedule, grid: torch.Tensor, schedule, noise_removal: str) -> torch.Tensor:
    """One kappa per step of `grid`: the schedule over the updates, then 1 for the noise-removal call."""
    updates = grid[:-1] if noise_removal != "none" else grid
    kappas = kappa.kappas(schedule(updates).alpha)
    if noise_removal != "none":
        kappas = torch.cat([kappas, torch.ones(1, dtype=kappas.dtype)])
    return kappas


def options_of(spec: SamplerSpec) -> PsiOptions:
    """The spec's Psi settings (the defaults when it carries none)."""
    return spec.options if spec.options is not None else PsiOptions()


def spec_grid(spec: SamplerSpec, schedule) -> torch.Tensor:
    """The time grid a spec asks for: linear, or linear-constant-linear around a plateau."""
    final_zero = spec.noise_removal != "none"
    opts = options_of(spec)
    if opts.time_profile == "linear-constant-linear":
        return linear_constant_linear_grid(spec.steps, opts.plateau, high_frac=opts.kappa.high_frac,
                                           middle_frac=opts.kappa.middle_frac, eps=spec.eps, final_zero=final_zero,
                                           schedule=schedule, plateau_in=opts.plateau_in)
    return linear_grid(spec.steps, spec.eps, final_zero=final_zero)


def check_spec(spec: SamplerSpec, schedule) -> None:
    """Psi's settings against the model's schedule: the plateau must lie inside the grid."""
    spec_grid(spec, schedule)


def from_spec(model, spec: SamplerSpec, shape, *, bos_id: int | None = None, **common):
    """The registry's adapter: a Psi-sampler run as `spec` describes."""
    return psi_sample(model.denoiser, model.process, model.schedule, shape, grid=spec_grid(spec, model.schedule),
                      kappa=options_of(spec).kappa, noise_removal=spec.noise_removal, p_nucleus=spec.p_nucleus,
                      dtype=spec.dtype, **common)


__all__ = ["PsiOptions", "check_spec", "from_spec", "nucleus", "psi_sample", "schedule_kappas", "spec_grid"]
