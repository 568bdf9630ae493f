"""Samplers: plain functions over one denoiser contract (duolm.contracts.Denoiser).

A denoiser is any callable ``denoiser(x_t (B, L) long, alpha_t (B,)) -> log p(x_0 | x_t) (B, L, S)``;
``duolm.sampling.denoiser_from`` builds one from a method and a backbone. SEDD's analytic
sampler takes the log concrete score in its place. ``SAMPLERS`` is the one name -> sampler
table that the config, the CLI and the shared test suite go through.
"""
from duolm.sampling.analytic import analytic_sample
from duolm.sampling.ancestral import ancestral_sample, denoiser_from
from duolm.sampling.ar import ar_sample
from duolm.sampling.categorical import draw_categorical, race_categorical
from duolm.sampling.grids import linear_constant_linear_grid, linear_grid
from duolm.sampling.guidance import guided_denoiser
from duolm.sampling.kappa import Kappa, KappaSchedule, parse_kappa
from duolm.sampling.psi import PsiOptions, nucleus, psi_sample
from duolm.sampling.registry import SAMPLERS, Sampler, SamplingModel, check_infill, check_sampler, checked_spec
from duolm.sampling.semi_ar import held_positions, semi_ar_sample
from duolm.sampling.spec import NOISE_REMOVAL, SamplerSpec, default_noise_removal, default_predictor

__all__ = ["NOISE_REMOVAL", "SAMPLERS", "Kappa", "KappaSchedule", "PsiOptions", "Sampler", "SamplerSpec", "SamplingModel", "analytic_sample",
           "ancestral_sample", "ar_sample", "check_infill", "check_sampler", "checked_spec", "default_noise_removal", "default_predictor",
           "denoiser_from", "guided_denoiser", "held_positions", "linear_constant_linear_grid", "linear_grid",
           "draw_categorical", "nucleus", "parse_kappa", "psi_sample", "race_categorical", "semi_ar_sample"]
