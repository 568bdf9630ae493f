"""Low-precision categorical draws lower sample entropy; duolm's per-token draws do not.

The papers' samplers draw each step from the whole posterior with the Gumbel-max trick,
argmax(q / E) with E = -log(U + 1e-10), in the dtype of q. U has a finite resolution (2^-24 in
float32), so E never falls below about 2^-24 and a state whose probability is below ~2^-24 of its
strongest competitor can never win. In a masked model's step the competitor is the mask, with
mass 1 - r against r p(x_0) for the tokens (r = 1/steps), so with many steps whole swaths of
the vocabulary stop being drawn (Zheng et al., 2024). Seeing it at 24 bits takes ~10^9 draws;
at 11 bits (float16's resolution) the same mechanism shows at test scale, and the test shows
that duolm's step (which tokens unmask is drawn first, in float64; then the token, from p
alone) keeps the exact rate and entropy.
"""
import math

import torch

from duolm.core.processes import AbsorbingProcess
from duolm.sampling.categorical import categorical_draw, draw_categorical

K, STEPS, N = 64, 64, 40_000


def _papers_draw(q: torch.Tensor, generator, bits: int) -> torch.Tensor:
    """The reference code's draw, Gumbel-max over the whole posterior, with uniforms of `bits` bits
    (torch.rand in float32 gives multiples of 2^-24: bits = 24)."""
    u = torch.floor(torch.rand(q.shape, generator=generator, dtype=torch.float64) * 2 ** bits) / 2 ** bits
    gumbel_norm = 1e-10 - (u + 1e-10).log()
    return (q / gumbel_norm).argmax(-1)


def _entropy(ids: torch.Tensor) -> float:
    p = torch.bincount(ids, minlength=K).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def test_a_low_precision_draw_of_the_whole_posterior_loses_tokens_where_float64_does_not():
    process = AbsorbingProcess(K)
    p = torch.cat([1.0 / torch.arange(1, K + 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    p /= p.sum()  # an x_0 prediction: Zipf over the 64 tokens
    h = float(-(p[:K] * p[:K].log()).sum())
    x_t = torch.full((N, 1), K)
    a_t, a_s = torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.5 + 1 / STEPS], dtype=torch.float64)
    q = process.posterior(p.expand(N, 1, K + 1), x_t, a_s, a_t)[:, 0]  # (N, K + 1): the mask keeps ~0.97
    rate = float(1 - q[0, K])
    g = torch.Generator().manual_seed(0)
    low = _papers_draw(q, g, bits=11)
    full = _papers_draw(q, g, bits=52)  # the same draw with float64 uniforms is exact
    exact = process.sample_step(p.log().expand(N, 1, K + 1), x_t, a_s, a_t, draw=draw_categorical, generator=g)[:, 0]
    lean = process.sample_step(p.log().expand(N, 1, K + 1).float(), x_t, a_s, a_t,
                               draw=categorical_draw(torch.float32), generator=g)[:, 0]
    sd = math.sqrt(N * rate * (1 - rate))
    for ids in (exact, lean, full):  # the exact rate (within 4 sd) and entropy (within 0.1 nats)
        unmasked = ids[ids != K]
        assert abs(len(unmasked) - N * rate) < 4 * sd
        assert abs(_entropy(unmasked) - h) < 0.1
    low_unmasked = low[low != K]
    assert len(low_unmasked) < N * rate - 10 * sd  # fewer tokens unmask ...
    assert _entropy(low_unmasked) < h - 0.3        # ... and the rare ones least of all
