"""Samplers: plain functions over one denoiser contract.

A denoiser is any callable ``denoiser(x_t (B, L) long, alpha_t (B,)) -> log p(x_0 | x_t) (B, L, S)``;
``duolm.sampling.denoiser_from`` builds one from a method and a backbone.
"""
from duolm.sampling.ancestral import NOISE_REMOVAL, ancestral_sample, denoiser_from, sample_categorical
from duolm.sampling.ar import ar_sample
from duolm.sampling.grids import linear_grid

__all__ = ["NOISE_REMOVAL", "ancestral_sample", "ar_sample", "denoiser_from", "linear_grid", "sample_categorical"]
