"""Every process, schedule and sampler-facing denoiser satisfies its contract (duolm.contracts)."""
import inspect

import pytest
import torch
from said_as import raises_said_as

from duolm.contracts import Denoiser, Process, Schedule
from duolm.core.methods import METHODS, PROCESSES, build_method
from duolm.core.schedules import SCHEDULES
from duolm.models.dit import DiT, DiTConfig
from duolm.sampling import denoiser_from


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_processes_share_one_signature(name):
    process = PROCESSES[name](5)
    assert isinstance(process, Process)
    for method in ("sample_xt", "marginal", "posterior", "prior_sample", "prior_kl", "nelbo_prior", "sample_step",
                   "greedy"):
        expected = list(inspect.signature(getattr(Process, method)).parameters)[1:]
        assert list(inspect.signature(getattr(process, method)).parameters) == expected, (name, method)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(process.prior_sample((3, 4), generator=g1), process.prior_sample((3, 4), generator=g2))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_round_trip_their_inverse(name):
    schedule = SCHEDULES[name](eps=1e-3)
    assert isinstance(schedule, Schedule)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(schedule.inverse(schedule(t).alpha), t)


@pytest.mark.parametrize("algo", [a for a, r in METHODS.items() if r.process is not None])
def test_every_diffusion_method_gives_a_denoiser(algo):
    method = build_method(algo, 6)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=16, cond_dim=8, n_blocks=1, n_heads=2,
                        dropout=0.0))
    den = denoiser_from(method, net)
    assert isinstance(den, Denoiser)
    out = den(torch.zeros(2, 3, dtype=torch.long), torch.full((2,), 0.5))
    assert out.shape == (2, 3, method.model_vocab_size)


@pytest.mark.parametrize("algo", sorted(METHODS))
def test_every_recipe_names_rows_that_exist(algo):
    """A recipe's parameterisation and loss are rows of their tables (AR's included), so a method is
    composed from the tables and nothing is matched by name elsewhere."""
    from duolm.core.methods import LOSSES, PARAMETERIZATIONS

    recipe = METHODS[algo]
    assert recipe.parameterization in PARAMETERIZATIONS and recipe.loss in LOSSES


@pytest.mark.parametrize("algo", sorted(METHODS))
def test_what_a_recipe_declares_it_supports_fits_its_process_and_output(algo):
    """Supports is declared, not derived: these are the facts each declaration rests on."""
    recipe, method = METHODS[algo], build_method(algo, 6)
    assert method.supports is recipe.supports
    if recipe.supports.curriculum or recipe.supports.distillation:  # both walk Gaussian trajectories through argmax
        assert method.process is not None and method.process.gaussian_dual
    if recipe.supports.blocks or recipe.supports.guidance:  # both read x_0 predictions
        assert method.output_kind == "x0"
    assert method.exact_likelihood == (method.output_kind == "ar") == (method.process is None)


def test_a_gate_follows_the_table_not_the_name(monkeypatch):
    """A recipe that declares blocks gets them: the refusal reads the table."""
    from dataclasses import replace

    from duolm.core import methods

    with raises_said_as(r"algo.block_size is for algo.name in \['mdlm', 'duo_base', 'duo'\]"):
        build_method("sedd", 6, block_size=2)
    monkeypatch.setitem(methods.METHODS, "sedd", replace(methods.METHODS["sedd"],
                                                         supports=methods.Supports(blocks=True)))
    assert build_method("sedd", 6, block_size=2).block_size == 2
    assert methods.same_model("duo", "duo_base") and not methods.same_model("mdlm", "sedd")
