import math

import pytest
import torch
from said_as import raises_said_as

from duolm.core.schedules import Cosine, LogLinear, make_schedule


@pytest.mark.parametrize("cls", [LogLinear, Cosine])
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
def test_derivative_matches_autograd_and_inverse_inverts(cls, eps):
    sched = cls(eps=eps)
    t = torch.linspace(0.01, 0.99, 57, dtype=torch.float64, requires_grad=True)
    out = sched(t)
    (grad,) = torch.autograd.grad(out.alpha.sum(), t)
    torch.testing.assert_close(out.dalpha, grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sched.inverse(out.alpha.detach()), t.detach(), rtol=1e-7, atol=1e-9)
    assert sched(torch.zeros(1, dtype=torch.float64)).alpha.item() == pytest.approx(1.0)
    assert (out.dalpha < 0).all()


def test_reference_cosine_derivative_and_inverse_are_wrong_for_eps():
    """The papers' cosine schedule drops the (1 - eps) factor in d alpha/dt and eps in t(alpha)."""
    eps = 0.1
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    ours = Cosine(eps)(t)
    ref_dalpha = -torch.sin(0.5 * math.pi * (1 - (1 - eps) * t)) * 0.5 * math.pi
    ref_inverse = 1 - 2 / math.pi * torch.acos(1 - ours.alpha)
    assert not torch.allclose(ref_dalpha, ours.dalpha)            # off by 1/(1 - eps)
    torch.testing.assert_close(ref_dalpha * (1 - eps), ours.dalpha)
    assert not torch.allclose(ref_inverse, t)                      # does not invert
    torch.testing.assert_close(Cosine(eps).inverse(ours.alpha), t)


def test_unknown_schedule_names_the_key():
    with raises_said_as("noise.type must be one of"):
        make_schedule("sqrt")
