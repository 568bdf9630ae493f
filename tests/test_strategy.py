"""The ways of generating (duolm.sampling.strategy) and what samplers report (duolm.sampling.observers)."""
from __future__ import annotations

import pytest
import torch

from duolm.core.methods import build_method
from duolm.core.processes import AbsorbingProcess
from duolm.core.schedules import LogLinear
from duolm.sampling import SAMPLERS, ancestral_sample
from duolm.sampling.observers import NOTHING, CountsOnly, Observer, Recorder
from duolm.sampling.strategy import STRATEGIES, strategy_for


def test_one_place_decides_the_strategy():
    assert strategy_for(build_method("mdlm", 5, block_size=4), 16, None) == "blocks"
    assert strategy_for(build_method("mdlm", 5, block_size=4), 16, 64) == "blocks"  # blocks go past the length
    assert strategy_for(build_method("ar", 5), 16, None) == "autoregressive"
    assert strategy_for(build_method("duo", 5), 16, 64) == "windows"
    assert strategy_for(build_method("duo", 5), 16, 16) == "window"
    assert strategy_for(build_method("sedd", 5), 16, None) == "window"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_row_declares_strategies_it_can_run(name):
    row = SAMPLERS[name]
    assert row.strategies and set(row.strategies) <= set(STRATEGIES)
    if "windows" in row.strategies:  # each window holds the end of the last
        assert row.holds_positions
    if "blocks" in row.strategies:  # a block is denoised from its prior by an x_0 sampler
        assert row.needs == "x0"
    assert ("autoregressive" in row.strategies) == (row.needs == "ar")


def _oracle(process):
    def den(x, alpha):
        out = torch.full((*x.shape, process.num_states), -30.0, dtype=torch.float64)
        out[..., 1] = 0.0
        return out.log_softmax(-1)
    return den


@pytest.mark.parametrize("cache", [False, True])
def test_an_observer_sees_one_state_per_step_and_the_counts(cache):
    """With the cache (first hitting) the steps that change nothing are reported too: the same number
    of frames as the cache-free run, and the calls made plus saved are the steps."""
    process = AbsorbingProcess(4)
    rec = Recorder(states=True)
    x = ancestral_sample(_oracle(process), process, LogLinear(), (3, 6), steps=10, noise_removal="greedy",
                         cache=cache, generator=torch.Generator().manual_seed(0), observer=rec)
    assert len(rec.states) == 1 + 11 and torch.equal(rec.states[-1], x.cpu())  # the prior, 10 updates, greedy
    assert (rec.states[0] == process.mask_id).all()
    assert rec.counts["denoiser_calls"] + rec.counts.get("cached_calls", 0) == 11
    quiet = Recorder()
    ancestral_sample(_oracle(process), process, LogLinear(), (3, 6), steps=10, cache=cache, observer=quiet,
                     generator=torch.Generator().manual_seed(0))  # the same draws (not the global RNG's state)
    assert quiet.states is None and quiet.counts == rec.counts and not quiet.wants_states and rec.wants_states


def test_counts_only_passes_counts_and_nothing_keeps_nothing():
    rec = Recorder(states=True)
    inner = CountsOnly(rec)
    inner.step(0, torch.zeros(2, 3))
    inner.report(denoiser_calls=3)
    assert rec.states == [] and rec.counts == {"denoiser_calls": 3}
    assert isinstance(NOTHING, Observer) and not NOTHING.wants_states
    NOTHING.step(0, torch.zeros(1))  # keeps nothing, raises nothing
    NOTHING.report(denoiser_calls=1)
