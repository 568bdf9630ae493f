"""One definition of a training step: the Lightning module and the reproduction benchmark both call
the training objective, and for the same seed they compute the same loss."""
import pytest
import torch

from benchmarks.reproduce import training_loss
from duolm.core.methods import build_method
from duolm.models.dit import DiT, DiTConfig
from duolm.training.curriculum import Curriculum, CurriculumSchedule
from duolm.training.distill import DeltaSchedule
from duolm.training.module import LitDiffusionLM, step_generator
from duolm.training.objectives import CurriculumNelbo, Distillation, Nelbo

K, B, L, SEED = 8, 6, 12, 3


def _objective(kind, method, net):
    if kind == "curriculum":
        sched = CurriculumSchedule(mode="simple", tau_log10_start=-1.0, tau_log10_end=-2.0, start=0, end=10,
                                   gamma_min=-2.7, gamma_max=1.5)
        return CurriculumNelbo(method, Curriculum(sched, K))
    if kind == "distill":
        return Distillation(method, net, schedule=DeltaSchedule(num_steps=8, update_every=2))
    return Nelbo(method)


@pytest.mark.parametrize("algo,kind", [("duo", "nelbo"), ("duo", "curriculum"), ("duo", "distill"),
                                       ("mdlm", "nelbo"), ("d3pm", "nelbo"), ("ar", "nelbo")])
def test_the_module_and_the_benchmark_take_the_same_step(algo, kind):
    method = build_method(algo, K)
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2,
                        dropout=0.0, causal=method.causal))
    for p in net.parameters():  # the DiT's output layer starts at zero: give it something to say
        torch.nn.init.normal_(p, std=0.2)
    objective = _objective(kind, method, net)
    module = LitDiffusionLM(objective, net, ema_decay=0.0, global_batch_size=B, seed=SEED)
    x0 = torch.randint(0, K, (B, L), generator=torch.Generator().manual_seed(1))
    for step in (0, 5):
        module_loss = module.training_step({"ids": x0, "valid": torch.ones(B, L)}, batch_idx=0) if step == 0 else None
        if step:
            # the module's step counter comes from the trainer; the objective sees it directly
            module_loss = objective.token_loss(net, x0, torch.ones(B, L), step=step,
                                               generator=step_generator(SEED, step, 0, 0),
                                               index=torch.arange(B), total=B).mean()
        bench_loss = training_loss(objective, net, x0, step, step_generator(SEED, step, 0, 0))
        assert torch.isfinite(module_loss) and module_loss.item() > 0
        assert module_loss.item() == bench_loss.item(), (algo, kind, step)


def test_the_curriculum_objective_stretches_t_onto_its_band():
    """The module draws t in [eps, 1]; the curriculum's band is t in [0, 1]: the objective stretches
    it (the benchmark used to skip this and drew t in [0, 1] directly, a different distribution)."""
    method = build_method("duo", K)
    sched = CurriculumSchedule(mode="simple", start=0, end=10, gamma_min=-2.7, gamma_max=1.5)
    seen = {}

    class Spy(Curriculum):
        def token_loss(self, method, backbone, x0, valid, step, t=None, generator=None, clean=None):
            seen["t"] = t
            return super().token_loss(method, backbone, x0, valid, step, t=t, generator=generator)

    net = DiT(DiTConfig(vocab_size=K, hidden_size=32, cond_dim=16, n_blocks=1, n_heads=2, dropout=0.0))
    objective = CurriculumNelbo(method, Spy(sched, K))
    objective.token_loss(net, torch.zeros(400, 4, dtype=torch.long), None, step=0,
                         generator=torch.Generator().manual_seed(0))
    t = seen["t"]
    # antithetic strata of [eps, 1] mapped back to [0, 1]: the smallest lies in [0, 1/400)
    assert float(t.min()) < 1 / 400 and float(t.max()) > 1 - 1 / 400 and float(t.min()) >= 0.0
    assert objective.metrics(0) == {"train/tau": pytest.approx(0.1)} and objective.metrics(11) == {}
