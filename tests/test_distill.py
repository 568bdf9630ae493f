"""Mechanics of Discrete Consistency Distillation."""
import pytest
import torch
from said_as import raises_said_as

from duolm.core.methods import build_method
from duolm.core.operator import DiffusionTransform, gaussian_coefficients, gaussian_latents
from duolm.models.dit import DiT, DiTConfig
from duolm.models.ema import EMA
from duolm.training.distill import DeltaSchedule, Teacher, dcd_loss

K = 11


def _net(seed=0):
    torch.manual_seed(seed)
    net = DiT(DiTConfig(vocab_size=K, hidden_size=32, cond_dim=8, n_blocks=1, n_heads=2, dropout=0.0))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net


def test_paired_latents_share_their_noise():
    x0 = torch.randint(0, K, (3, 5))
    g_t, g_s = torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([-2.0, -1.0, 1.0])
    w_t, w_s = gaussian_latents(x0, [g_t, g_s], K, torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(x0, K).float()
    eps = []
    for w, g in ((w_t, g_t), (w_s, g_s)):
        a, s = (c.float().reshape(-1, 1, 1) for c in gaussian_coefficients(g.double()))
        eps.append((w - a * onehot) / s)
    torch.testing.assert_close(eps[0], eps[1], atol=1e-5, rtol=1e-5)


def test_delta_doubles_at_each_refresh_and_grows_linearly_when_asked():
    d = DeltaSchedule(num_steps=512, update_every=100)
    assert [d.delta(s) for s in (0, 99, 100, 250, 400)] == [1 / 512, 1 / 512, 2 / 512, 4 / 512, 16 / 512]
    assert d.delta(10 ** 6) == 1.0
    lin = DeltaSchedule(growth="linear", linear_min=0.01, linear_max=0.2, max_steps=100)
    assert lin.delta(0) == pytest.approx(0.01) and lin.delta(50) == pytest.approx(0.105) and lin.delta(500) == 0.2
    with raises_said_as("distill.delta_growth"):
        DeltaSchedule(growth="exp")


def test_the_papers_recipe_is_expressible():
    d = DeltaSchedule(num_steps=512, update_every=10_000)  # 5 rounds of 10K steps, T = 512
    assert [d.delta(r * 10_000) for r in range(5)] == [2 ** r / 512 for r in range(5)]


def test_teacher_refreshes_per_round_restores_and_never_gets_gradients():
    student = _net()
    teacher = Teacher(student)
    sched = DeltaSchedule(num_steps=64, update_every=3)
    method = build_method("duo", K)
    op = DiffusionTransform(K)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x0 = torch.randint(0, K, (4, 6))
    refreshed = []
    for step in range(7):
        refreshed.append(teacher.maybe_refresh(step, sched, student))
        loss = dcd_loss(method, student, teacher.net, x0, torch.rand(4), sched.delta(step), operator=op).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in teacher.net.parameters())
        opt.step()
    assert refreshed == [False, False, False, True, False, False, True] and teacher.round == 2
    # resumption: the round and the weights come back
    state = teacher.state_dict()
    other = Teacher(_net(seed=1))
    other.load_state_dict(state)
    assert other.round == 2
    for a, b in zip(other.net.parameters(), teacher.net.parameters()):
        assert torch.equal(a, b)
    # refreshing from the EMA copies the EMA weights
    ema = EMA(student, 0.9)
    teacher.refresh(student, ema)
    assert all(torch.equal(p, ema.shadow[n]) for n, p in teacher.net.named_parameters())


@pytest.mark.parametrize("kind", ["kl-bwd", "kl-fwd"])
def test_loss_vanishes_when_the_teacher_is_the_student_and_delta_shrinks(kind):
    student = _net()
    teacher = Teacher(student)
    method = build_method("duo", K)
    op = DiffusionTransform(K)
    x0 = torch.randint(0, K, (16, 8), generator=torch.Generator().manual_seed(1))
    t = torch.rand(16, generator=torch.Generator().manual_seed(2))
    losses = [dcd_loss(method, student, teacher.net, x0, t, d, operator=op, kind=kind, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(3)).mean().item() for d in (0.3, 0.03, 1e-4, 0.0)]
    assert losses[0] > losses[1] > losses[2] >= 0 and losses[3] == pytest.approx(0.0, abs=1e-12)
    assert losses[0] > 1e-3  # not vacuous: a real step back costs something


def test_distill_command_trains_a_student_and_resumes_its_teacher(tmp_path, corpus):
    """`duolm distill` from a trained Duo model: the checkpoint holds the student's weights (no
    teacher keys) and the teacher's round, and a resumed run continues the round count."""
    from tiny_run import TINY

    from duolm.app.cli import main

    common = [*TINY, "data=local", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "algo=duo_base", "trainer.max_steps=3", f"run.dir={tmp_path / 'teacher'}", *common]) == 0
    student_args = ["distill", f"eval.checkpoint_path={tmp_path / 'teacher' / 'model'}", "distill.T=8",
                    "distill.update_teacher_every=2", f"run.dir={tmp_path / 'student'}", *common]
    assert main([*student_args, "trainer.max_steps=3"]) == 0
    ckpt = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["distill"]["round"] == 1 and not any("teacher" in k for k in ckpt["state_dict"])
    assert main([*student_args, "trainer.max_steps=5"]) == 0
    ckpt = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["distill"]["round"] == 2
    from duolm.checkpoints.loading import from_pretrained

    assert from_pretrained(tmp_path / "student" / "model").method.name == "duo_base"
    # the samples printed after distillation are the student's, and say so
    import json

    samples = json.loads((tmp_path / "student" / "samples.json").read_text())
    assert samples["checkpoint"] == str(tmp_path / "student" / "model")


def test_synthetic_chain_metrics_catch_collapse():
    """The Markov-chain yardstick: data samples score the entropy rate and a small bigram TV;
    samples collapsed onto one likely sequence score a low NLL but a large TV."""
    from duolm.evaluation.hmm import bigram_tv, diversity, entropy_rate, markov_chain, nll_per_token, sample_chain

    pi, P = markov_chain(8, seed=0)
    x = sample_chain(pi, P, 4000, 12, torch.Generator().manual_seed(0))
    assert nll_per_token(x, pi, P) == pytest.approx(entropy_rate(pi, P), abs=0.1)
    assert bigram_tv(x, pi, P) < 0.03 and diversity(x)[1] > 0.95
    best = torch.tensor([int(pi.argmax())] * 12)
    for i in range(1, 12):
        best[i] = int(P[best[i - 1]].argmax())
    collapsed = best.expand(4000, 12)
    assert nll_per_token(collapsed, pi, P) < nll_per_token(x, pi, P)
    assert bigram_tv(collapsed, pi, P) > 0.5 and diversity(collapsed)[1] < 0.01
