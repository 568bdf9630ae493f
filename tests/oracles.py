"""Brute-force oracles on tiny vocabularies, shared by the math tests."""
from __future__ import annotations

import itertools

import numpy as np
import torch


def random_joint(K: int, L: int, seed: int = 0, concentration: float = 0.5) -> torch.Tensor:
    """A random distribution over all K**L sequences, (K**L,) float64, with strong correlations."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(K ** L, concentration)))


def all_sequences(K: int, L: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K), repeat=L)), dtype=torch.long)


def oracle_posterior_marginals(process, data_seqs, data_probs, x_t, alpha, exclude_self=False):
    """p(x_0^i = k | x_t) for every position, by enumerating x_0: (B, L, num_states) float64.

    x_t: (B, L); alpha: (B, 1). Mass on the mask state is zero. With
    exclude_self, position i is conditioned on the other tokens only,
    p(x_0^i | x_t^{-i}): the optimum of the uniform-state mean parameterisation.
    """
    B, L = x_t.shape
    S = process.num_states
    eye = torch.eye(S, dtype=torch.float64)
    K = data_seqs.max().item() + 1
    # q(x_t^j | x_0^j = k) for every data token k: (B, L, K)
    q_tok = process.marginal(eye[:K].expand(B, L, K, S), alpha.reshape(B, 1, 1).to(torch.float64))
    lik = torch.gather(q_tok, -1, x_t[:, :, None, None].expand(B, L, K, 1))[..., 0]  # (B, L, K)
    # weight of each data sequence given x_t: p(x0) prod_j q(x_t^j | x0^j)
    out = torch.zeros(B, L, S, dtype=torch.float64)
    for i in range(L):
        w = data_probs[None].expand(B, -1).clone()  # (B, N)
        for j in range(L):
            if not (exclude_self and j == i):
                w = w * lik[:, j, :][:, data_seqs[:, j]]
        w = w / w.sum(-1, keepdim=True)
        out[:, i, :K] = torch.zeros(B, K, dtype=torch.float64).index_add_(1, data_seqs[:, i], w)
    return out


def entropy(p: torch.Tensor) -> float:
    return float(-(torch.xlogy(p, p)).sum())
