"""SamplerSpec.temperature: every x_0 sampler draws from p(x_0 | x_t)^(1/T) renormalised, AR from
softmax(logits / T); T = 0 is the argmax. Checked on a one-position model whose denoiser is a fixed
distribution (the samples' law is then exactly the tempered one) and on AR's next-token draw."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from duolm.core.methods import build_method
from duolm.sampling import SamplerSpec
from duolm.sampling.ar import next_token
from duolm.sampling.confidence import ConfidenceOptions
from duolm.sampling.registry import SAMPLERS, SamplingModel, checked_spec, tempered

K = 5
P = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15], dtype=torch.float64)


def _fixed(method):
    """A denoiser that says p(x_0 | x_t) = P at every position, whatever x_t (mask state: no mass)."""
    S = method.process.num_states

    def den(x_t, alpha_t):
        out = torch.full((*x_t.shape, S), float("-inf"), dtype=torch.float64)
        out[..., :K] = P.log()
        return out

    return SamplingModel(den, method.process, method.schedule, "x0", method=method)


def _power(t):
    q = P ** (1 / t)
    return q / q.sum()


def test_tempered_denoiser_is_the_power_of_p_and_the_argmax_at_zero():
    m = build_method("mdlm", K, loss_dtype=torch.float64)
    model = _fixed(m)
    assert tempered(model, 1) is model
    x = torch.full((2, 3), m.mask_id)
    alpha = torch.zeros(2, 1)
    for t in (0.5, 2.0):
        got = tempered(model, t).denoiser(x, alpha)[..., :K].exp()
        torch.testing.assert_close(got, _power(t).expand(2, 3, K), rtol=0, atol=1e-12)
    zero = tempered(model, 0).denoiser(x, alpha)[..., :K].exp()
    assert torch.equal(zero.argmax(-1), torch.full((2, 3), 1)) and torch.allclose(zero.sum(-1), torch.ones(2, 3, dtype=zero.dtype))


@pytest.mark.parametrize("algo,predictor", [("mdlm", "ancestral"), ("duo_base", "ancestral"), ("duo_base", "psi")])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_x0_samplers_draw_the_tempered_distribution(algo, predictor, t):
    """20,000 one-position samples (ancestral last step) against P^(1/T) / Z."""
    m = build_method(algo, K, loss_dtype=torch.float64)
    spec = checked_spec(SamplerSpec(predictor, steps=4, noise_removal="ancestral", temperature=t), m, 8)
    g = torch.Generator().manual_seed(0)
    x = SAMPLERS[predictor].run(tempered(_fixed(m), t), spec, (20_000, 1), bos_id=None, generator=g,
                                disable_progress=True)
    counts = torch.bincount(x.flatten(), minlength=K)[:K].double()
    assert chisquare(counts.numpy(), (_power(t) * 20_000).numpy()).pvalue > 1e-3


def test_ar_next_token_draws_softmax_of_logits_over_t():
    logits = P.log()[None].expand(30_000, -1).float()
    g = torch.Generator().manual_seed(1)
    draws = next_token(logits, 0.5, g).flatten()
    counts = torch.bincount(draws, minlength=K).double()
    assert chisquare(counts.numpy(), (_power(0.5) * 30_000).numpy()).pvalue > 1e-3
    assert (next_token(logits[:3], 0.0) == 1).all()
    # T = 1 draws what the old code drew: softmax in float64, one multinomial
    torch.testing.assert_close(next_token(logits[:4], 1.0, torch.Generator().manual_seed(2)),
                               torch.multinomial(logits[:4].double().softmax(-1), 1,
                                                 generator=torch.Generator().manual_seed(2)))


def test_bad_temperatures_are_one_sentence_naming_the_field():
    with pytest.raises(ValueError, match="temperature must be a number from 0"):
        SamplerSpec(temperature=-1)
    with pytest.raises(ValueError, match="score model"):
        checked_spec(SamplerSpec("analytic", temperature=0.5), build_method("sedd", K), 8)
    spec = SamplerSpec("confidence", temperature=0.5, options=ConfidenceOptions(cache="prefix", block_length=4))
    with pytest.raises(ValueError, match="approximate cache"):
        checked_spec(spec, build_method("mdlm", K), 8)
