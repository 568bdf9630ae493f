"""Samplers: plain functions over one denoiser contract.

A denoiser is any callable ``denoiser(x_t (B, L) long, alpha_t (B,)) -> log p(x_0 | x_t) (B, L, S)``;
``duolm.sampling.denoiser_from`` builds one from a method and a backbone. SEDD's analytic
sampler takes the log concrete score in its place.
"""
from duolm.sampling.analytic import analytic_sample
from duolm.sampling.ancestral import NOISE_REMOVAL, ancestral_sample, denoiser_from, sample_categorical
from duolm.sampling.ar import ar_sample
from duolm.sampling.guidance import guided_denoiser
from duolm.sampling.grids import linear_constant_linear_grid, linear_grid
from duolm.sampling.kappa import Kappa, KappaSchedule, parse_kappa
from duolm.sampling.psi import nucleus, psi_sample
from duolm.sampling.semi_ar import semi_ar_sample

__all__ = ["NOISE_REMOVAL", "Kappa", "KappaSchedule", "analytic_sample", "ancestral_sample", "ar_sample",
           "denoiser_from", "guided_denoiser", "linear_constant_linear_grid", "linear_grid", "nucleus", "parse_kappa",
           "psi_sample", "sample_categorical", "semi_ar_sample"]
