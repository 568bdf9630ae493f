"""The chunked (fused) vocabulary loss gives the straightforward loss and gradients, for every method."""
import copy
import dataclasses

import pytest
import torch

from duolm.contracts import Capabilities
from duolm.core import chunked_loss
from duolm.core.chunked_loss import Head
from duolm.core.chunked_loss import chunked_loss as run_chunked
from duolm.core.conditioning import with_labels
from duolm.core.methods import build_method
from duolm.core.operator import DiffusionTransform
from duolm.models.dit import DiT, DiTConfig
from duolm.training.curriculum import Curriculum, CurriculumSchedule
from duolm.training.distill import dcd_loss

K = 11  # data tokens


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 3 tokens, so every batch below spans several chunks and a ragged last one."""
    monkeypatch.setattr(chunked_loss, "TARGET_CHUNK_ELEMENTS", 3 * (K + 1))
    monkeypatch.setattr(chunked_loss, "WIDTH_FACTOR", 0.0)


def _net(method, seed=0, num_classes=0):
    torch.manual_seed(seed)
    net = DiT(DiTConfig(vocab_size=method.model_vocab_size + (1 if method.process is None else 0), hidden_size=16,
                        cond_dim=8, n_blocks=1, n_heads=2, dropout=0.0, causal=method.causal,
                        num_classes=num_classes)).double()
    with torch.no_grad():  # the zero-initialised output layer would make every gradient trivially equal
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


def _both(method, run):
    """run(method, net) -> TokenLoss for the fused and the straightforward method; their losses and gradients."""
    out = []
    for fused in (True, False):
        m = dataclasses.replace(method, fused=fused)
        net = _net(method)
        loss = run(m, net)
        loss.mean().backward()
        out.append((loss.nll.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    return out


def _assert_same(a, b):
    (la, ga), (lb, gb) = a, b
    torch.testing.assert_close(la, lb, rtol=1e-9, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) > 5
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-6, atol=1e-12, msg=name)


METHODS = [("ar", {}), ("mdlm", {}), ("sedd", {}), ("d3pm", {"num_steps": 10}), ("duo", {}), ("duo", {"num_steps": 8})]


@pytest.mark.parametrize("name,kw", METHODS, ids=[f"{n}{kw.get('num_steps', '')}" for n, kw in METHODS])
def test_every_method_gives_the_same_loss_and_gradients(name, kw):
    method = build_method(name, K, loss_dtype=torch.float64, **kw)
    x0 = torch.randint(0, K, (3, 7), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(3, 7)
    valid[1, 4:] = 0  # padding must not count

    def run(m, net):
        return m.token_loss(net, x0, valid, generator=torch.Generator().manual_seed(2))

    fused, plain = _both(method, run)
    _assert_same(fused, plain)
    assert torch.isfinite(fused[0]).all()


@pytest.mark.parametrize("mode,top_k", [("simple", -1), ("poly5", 3)])
def test_the_curriculum_gives_the_same_loss_and_gradients(mode, top_k):
    method = build_method("duo", K, loss_dtype=torch.float64)
    cur = Curriculum(CurriculumSchedule(mode=mode, start=0, end=10, top_k=top_k), K)
    x0 = torch.randint(0, K, (3, 7), generator=torch.Generator().manual_seed(1))

    def run(m, net):
        return cur.token_loss(m, net, x0, None, step=1, generator=torch.Generator().manual_seed(3))

    _assert_same(*_both(method, run))


@pytest.mark.parametrize("kind", ["kl-bwd", "kl-fwd"])
def test_distillation_gives_the_same_loss_and_gradients(kind):
    method = build_method("duo", K, loss_dtype=torch.float64)
    x0 = torch.randint(0, K, (3, 7), generator=torch.Generator().manual_seed(1))
    teacher = _net(method, seed=5).eval()
    op = DiffusionTransform(K)

    def run(m, net):
        return dcd_loss(m, net, teacher, x0, torch.tensor([0.1, 0.5, 0.9]), 0.125, operator=op, kind=kind,
                        dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    _assert_same(*_both(method, run))


def test_class_conditional_labels_reach_the_fused_head():
    method = build_method("duo", K, loss_dtype=torch.float64)
    x0 = torch.randint(0, K, (3, 7), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 3])
    out = []
    for fused in (True, False):
        m = dataclasses.replace(method, fused=fused)
        torch.manual_seed(0)
        net = _net(method, num_classes=3)
        out.append(m.token_loss(with_labels(net, labels), x0, generator=torch.Generator().manual_seed(2)).nll)
    torch.testing.assert_close(out[0], out[1], rtol=1e-9, atol=1e-12)


def test_a_backbone_without_a_linear_head_chunks_the_loss_only():
    method = build_method("mdlm", K, loss_dtype=torch.float64)
    x0 = torch.randint(0, K, (2, 9), generator=torch.Generator().manual_seed(1))

    class Logits(torch.nn.Module):  # a stand-in for the UNet: logits from a module with no `head`
        capabilities = Capabilities(time_conditioning=True, soft_inputs=True)

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, sigma, weights=None):
            return self.net(x, sigma, weights=weights)

    out = []
    for fused in (True, False):
        m = dataclasses.replace(method, fused=fused)
        wrapper = Logits(_net(method))
        loss = m.token_loss(wrapper, x0, generator=torch.Generator().manual_seed(2))
        loss.mean().backward()
        out.append((loss.nll.detach(), {n: p.grad.clone() for n, p in wrapper.named_parameters()}))
    _assert_same(*out)


def test_evaluation_without_gradients_gives_the_same_numbers():
    method = build_method("duo", K, loss_dtype=torch.float64)
    net = _net(method)
    x0 = torch.randint(0, K, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = method.token_loss(net, x0, generator=torch.Generator().manual_seed(2)).nll
        plain = dataclasses.replace(method, fused=False).token_loss(net, x0,
                                                                    generator=torch.Generator().manual_seed(2)).nll
    torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-12)


def test_a_reduction_other_than_the_weighted_mean_is_refused():
    f = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    loss = run_chunked(Head(f, w), lambda z, rows: z.logsumexp(-1), torch.ones(6), dtype=torch.float64, chunk=4)
    (loss * 2.0).sum().backward()  # proportional to the weights: fine
    torch.testing.assert_close(f.grad, 2.0 * torch.softmax(f.detach() @ w.detach().T, -1) @ w.detach())
    loss = run_chunked(Head(f, w), lambda z, rows: z.logsumexp(-1), torch.ones(6), dtype=torch.float64, chunk=4)
    with pytest.raises(RuntimeError, match="weighted sum"):
        (loss * torch.arange(6.0, dtype=torch.float64)).sum().backward()


def test_autocast_keeps_the_loss_in_float32():
    method = build_method("duo", K)
    net = _net(method).float()
    x0 = torch.randint(0, K, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.token_loss(net, x0, generator=torch.Generator().manual_seed(2))
        loss.mean().backward()
    assert loss.nll.dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)
    ref = copy.deepcopy(net)
    with torch.no_grad():
        plain = dataclasses.replace(method, fused=False).token_loss(ref, x0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(loss.nll.detach(), plain.nll, rtol=0.05, atol=0.05)  # bf16 projection


def test_duos_written_out_gradient_is_autograds():
    from duolm.core import losses

    g = torch.Generator().manual_seed(0)
    n, K = 40, 9
    z = torch.randn(n, K, generator=g, dtype=torch.float64) * 2
    x0 = torch.randint(0, K, (n,), generator=g)
    x_t = torch.where(torch.rand(n, generator=g) < 0.5, x0, torch.randint(0, K, (n,), generator=g))
    alpha = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    dalpha = -torch.rand(n, generator=g, dtype=torch.float64) - 0.1
    w = torch.rand(n, generator=g, dtype=torch.float64)
    loss, grad = losses.uniform_nelbo_and_grad(z.clone(), x_t, x0, alpha, dalpha, w)
    zz = z.clone().requires_grad_()
    ref = losses.uniform_nelbo(zz.log_softmax(-1)[:, None], x_t[:, None], x0[:, None], alpha[:, None, None][:, 0],
                               dalpha[:, None])[:, 0]
    (ref_grad,) = torch.autograd.grad((ref * w).sum(), zz)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert (x0 == x_t).any() and (x0 != x_t).any()


@pytest.mark.parametrize("name,written", [("duo", "uniform_nelbo_and_grad"), ("mdlm", "cross_entropy_and_grad"),
                                          ("ar", "cross_entropy_and_grad")])
def test_training_uses_the_written_out_gradient(monkeypatch, name, written):
    from duolm.core import losses

    calls = []
    real = getattr(losses, written)
    monkeypatch.setattr(losses, written, lambda *a, **k: calls.append(1) or real(*a, **k))
    method = build_method(name, K, loss_dtype=torch.float64)
    x0 = torch.randint(0, K, (2, 7), generator=torch.Generator().manual_seed(1))
    method.token_loss(_net(method), x0, generator=torch.Generator().manual_seed(2)).mean().backward()
    assert len(calls) == (4 if name == "ar" else 5)  # 14 tokens (12 for AR) in chunks of 3


def test_the_cross_entropy_gradient_is_autograds():
    from duolm.core import losses

    g = torch.Generator().manual_seed(0)
    z = torch.randn(30, 8, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 7, (30,), generator=g)
    scale, w = torch.rand(30, generator=g, dtype=torch.float64), torch.rand(30, generator=g, dtype=torch.float64)
    for exclude in (None, 7):
        loss, grad = losses.cross_entropy_and_grad(z.clone(), t, scale, w, exclude=exclude)
        zz = z.clone().requires_grad_()
        masked = zz if exclude is None else zz.index_fill(-1, torch.tensor([exclude]), -1e6)
        ref = scale * -masked.log_softmax(-1).gather(-1, t[:, None])[:, 0]
        (ref_grad,) = torch.autograd.grad((ref * w).sum(), zz)
        torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)


def test_the_chunk_grows_with_the_width_not_with_the_batch(monkeypatch):
    """At least 2^22 logits and at least H / 2 tokens per chunk; never a function of N (memory stays flat)."""
    monkeypatch.setattr(chunked_loss, "TARGET_CHUNK_ELEMENTS", 1 << 22)
    monkeypatch.setattr(chunked_loss, "WIDTH_FACTOR", 0.5)
    assert chunked_loss.chunk_tokens(50257) == (1 << 22) // 50257 == 83     # no projection: the floor
    assert chunked_loss.chunk_tokens(50257, hidden=64) == 83                 # narrow: the floor
    assert chunked_loss.chunk_tokens(50257, hidden=768) == 384               # GPT-2 width: n = H / 2
    assert chunked_loss.chunk_tokens(28, hidden=768) == (1 << 22) // 28      # a small vocabulary: the floor


def test_ar_at_gpt2_width_runs_its_cross_entropy_plainly_until_the_logits_pass_the_budget(monkeypatch):
    """The AR row's plain_from_width: at a projection 512 or wider the straightforward cross-entropy
    measured faster, so it runs unchunked while the batch's logits fit PLAIN_MAX_LOGITS, and chunked
    above it; both give the plain method's losses and gradients. Narrower heads and the other losses
    always chunk."""
    import duolm.core.methods as methods

    calls = []
    monkeypatch.setattr(methods, "chunked_loss", lambda *a, **k: calls.append(1) or run_chunked(*a, **k))
    method = build_method("ar", K, loss_dtype=torch.float64)
    x0 = torch.randint(0, K, (2, 9), generator=torch.Generator().manual_seed(1))

    def grads(m, width):
        torch.manual_seed(0)
        net = DiT(DiTConfig(vocab_size=K + 1, hidden_size=width, cond_dim=8, n_blocks=1, n_heads=2, dropout=0.0,
                            causal=True)).double()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        loss = m.token_loss(net, x0)
        loss.mean().backward()
        return loss.nll.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}

    plain = grads(dataclasses.replace(method, fused=False), 512)
    assert not calls
    _assert_same(grads(method, 512), plain)
    assert not calls  # wide, and 16 x 11 logits are far under the budget: plain
    monkeypatch.setattr(methods, "PLAIN_MAX_LOGITS", 16 * K - 1)
    _assert_same(grads(method, 512), plain)
    assert len(calls) == 1  # over the budget: chunked
    monkeypatch.setattr(methods, "PLAIN_MAX_LOGITS", 1 << 27)
    grads(method, 16)
    assert len(calls) == 2  # narrow: chunked
    assert methods.LOSSES["uniform"].plain_from_width is None and methods.LOSSES["mdlm"].plain_from_width is None
