"""A known generative process whose likelihood is exact: a random first-order Markov chain.

Quality of generated samples is then measured exactly (NLL per token under the true chain),
next to their diversity (token entropy, share of distinct sequences), so that a sampler or a
distilled model cannot score well by collapsing onto a few likely sequences.
"""
from __future__ import annotations

import numpy as np
import torch


def markov_chain(K: int, seed: int = 0, concentration: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(pi, P): a random transition matrix (rows ~ Dirichlet(concentration)) and its stationary law."""
    rng = np.random.default_rng(seed)
    P = torch.tensor(rng.dirichlet(np.full(K, concentration), size=K), dtype=torch.float64).clamp_min(1e-12)
    P = P / P.sum(-1, keepdim=True)
    evals, evecs = torch.linalg.eig(P.T)
    pi = evecs[:, evals.real.argmax()].real.abs()
    return (pi / pi.sum()).float(), P.float()


def sample_chain(pi, P, n: int, length: int, generator=None) -> torch.Tensor:
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.multinomial(pi, n, replacement=True, generator=generator)
    for i in range(1, length):
        x[:, i] = torch.multinomial(P[x[:, i - 1]], 1, generator=generator)[:, 0]
    return x


def nll_per_token(x: torch.Tensor, pi, P) -> float:
    """Exact negative log-likelihood per token of sequences x (n, L) under the chain."""
    lp = torch.log(pi[x[:, 0]]) + torch.log(P[x[:, :-1], x[:, 1:]]).sum(-1)
    return float(-lp.mean() / x.shape[1])


def entropy_rate(pi, P) -> float:
    return float(-(pi[:, None] * P * torch.log(P.clamp_min(1e-30))).sum())


def diversity(x: torch.Tensor) -> tuple[float, float]:
    """(entropy of the token frequencies in nats, share of distinct sequences)."""
    p = torch.bincount(x.reshape(-1)).double()
    p = p / p.sum()
    return float(-(torch.xlogy(p, p)).sum()), len({tuple(r) for r in x.tolist()}) / x.shape[0]


def bigram_tv(x: torch.Tensor, pi, P) -> float:
    """Total-variation distance between the samples' bigram frequencies and the chain's
    pi(a) P(a, b): low only if samples are both likely and as varied as the data."""
    K = P.shape[0]
    pairs = x[:, :-1] * K + x[:, 1:]
    freq = torch.bincount(pairs.reshape(-1), minlength=K * K).double()
    freq = freq / freq.sum()
    true = (pi[:, None].double() * P.double()).reshape(-1)
    return float(0.5 * (freq - true).abs().sum())
