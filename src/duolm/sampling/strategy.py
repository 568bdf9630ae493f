"""How a batch is generated around a sampler row: the one place that decides.

- ``window``: the model's whole length at once (any row);
- ``windows``: semi-autoregressive windows past the model's length (sampling.total_length), each
  new window holding the end of the last (duolm.sampling.semi_ar; rows that hold positions);
- ``blocks``: block by block against the exact key-value cache, for block diffusion models
  (duolm.sampling.blocks; x_0 rows);
- ``autoregressive``: token by token with the cache, for algo=ar (the ar row).

A sampler row declares the strategies it supports (`Sampler.strategies`); `strategy_for` picks the
one a request needs and `sample_batch` runs it.
"""
from __future__ import annotations

STRATEGIES = ("window", "windows", "blocks", "autoregressive")


def strategy_for(method, length: int, total_length: int | None) -> str:
    """The strategy a method needs for total_length tokens (None: the model's length) from a model of
    `length`: blocks for block diffusion, autoregressive for AR, windows past the length."""
    if method.block_size is not None:
        return "blocks"
    if method.output_kind == "ar":
        return "autoregressive"
    if total_length and total_length > length:
        return "windows"
    return "window"


__all__ = ["STRATEGIES", "strategy_for"]
