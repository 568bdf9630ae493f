"""Exact yardsticks: data sources whose likelihood is known, so sample quality is measured exactly.

A random hidden Markov model has long-range structure; a visible first-order Markov chain
(``markov_chain``, also ``markov_chain_hmm``) has closed forms for its entropy rate and bigram
law, so a sampler or a distilled model cannot score well by collapsing onto a few likely
sequences (``bigram_tv``, ``diversity``).

Sequences of symbols come from hidden states that follow a Markov chain; each symbol depends on
the whole past through the hidden state, so a model must learn more than bigrams. The exact
log-likelihood of any sequence is the forward algorithm, which makes the negative log-likelihood
of generated samples an exact quality measure (and the mean NLL of true sequences, per token, the
floor every model's NELBO must stay above).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from duolm.evaluation.samples import token_entropy


@dataclass
class HiddenMarkovModel:
    initial: torch.Tensor      # (S,)     p(h_1)
    transition: torch.Tensor   # (S, S)   p(h_{i+1} | h_i), rows sum to one
    emission: torch.Tensor     # (S, V)   p(x_i | h_i), rows sum to one

    @property
    def num_states(self) -> int:
        return self.transition.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    def to_dict(self) -> dict:
        return {"initial": self.initial.tolist(), "transition": self.transition.tolist(),
                "emission": self.emission.tolist()}

    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, length) symbols, by inverse-CDF draws (row-wise multinomial is ~50x slower here)."""
        def draw(cdf):  # (n, k) cumulative rows -> (n,) indices
            u = torch.rand(cdf.shape[0], 1, generator=generator, dtype=cdf.dtype)
            return (cdf < u).sum(-1).clamp_max(cdf.shape[1] - 1)

        init_cdf = self.initial.double().cumsum(-1)
        trans_cdf, emit_cdf = self.transition.double().cumsum(-1), self.emission.double().cumsum(-1)
        h = draw(init_cdf.expand(n, -1))
        x = torch.empty(n, length, dtype=torch.long)
        for i in range(length):
            x[:, i] = draw(emit_cdf[h])
            if i + 1 < length:
                h = draw(trans_cdf[h])
        return x

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) exact log p(x) in nats for sequences x (n, L), by the forward algorithm in log space."""
        if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
            raise ValueError(f"expected (n, L) integer symbols, got {tuple(x.shape)} {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"symbols must lie in [0, {self.vocab_size}); got "
                             f"[{int(x.min())}, {int(x.max())}]")
        log_a = self.transition.double().log()                      # (S, S)
        log_b = self.emission.double().log().T[x]                   # (n, L, S): log p(x_i | h)
        f = self.initial.double().log() + log_b[:, 0]               # (n, S): log p(x_1, h_1)
        for i in range(1, x.shape[1]):
            f = torch.logsumexp(f[:, :, None] + log_a, dim=1) + log_b[:, i]
        return torch.logsumexp(f, dim=-1)

    def nll_per_token(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) exact NLL per token of each sequence, in nats."""
        return -self.log_likelihood(x) / x.shape[1]

    def entropy_per_token(self, length: int, n: int = 20_000, seed: int = 0) -> tuple[float, float]:
        """(H(X_1..L) / L, its standard error), in nats: the mean NLL per token of true sequences.

        This, not the asymptotic entropy rate, is the floor for a model of length-L blocks.
        """
        g = torch.Generator().manual_seed(seed)
        vals = torch.cat([self.nll_per_token(self.sample(min(4096, n - i), length, g))
                          for i in range(0, n, 4096)])
        return float(vals.mean()), float(vals.std() / math.sqrt(len(vals)))


def markov_chain_hmm(initial: torch.Tensor, transition: torch.Tensor) -> HiddenMarkovModel:
    """A visible first-order Markov chain, written as an HMM whose emissions are the identity."""
    return HiddenMarkovModel(initial.float(), transition.float(), torch.eye(transition.shape[0]))


def random_hmm(num_states: int = 16, vocab_size: int = 32, transition_concentration: float = 0.1,
               emission_concentration: float = 0.03, seed: int = 0) -> HiddenMarkovModel:
    """Dirichlet-random transitions and emissions; small concentrations give sparse, structured rows."""
    rng = np.random.default_rng(seed)

    def rows(n, k, c):
        p = torch.tensor(rng.dirichlet(np.full(k, c), size=n), dtype=torch.float64).clamp_min(1e-12)
        return (p / p.sum(-1, keepdim=True)).float()

    trans = rows(num_states, num_states, transition_concentration)
    emit = rows(num_states, vocab_size, emission_concentration)
    # start from the chain's stationary law, so every position has the same marginal
    evals, evecs = torch.linalg.eig(trans.double().T)
    pi = evecs[:, evals.real.argmax()].real.abs()
    return HiddenMarkovModel((pi / pi.sum()).float(), trans, emit)


# --- the visible case: a first-order Markov chain (pi, P), with closed forms -------------------

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
    return token_entropy(x), len({tuple(r) for r in x.tolist()}) / x.shape[0]


def bigram_tv(x: torch.Tensor, pi, P) -> float:
    """Total-variation distance between the samples' bigram frequencies and the chain's
    pi(a) P(a, b): low only if samples are both likely and as varied as the data."""
    K = P.shape[0]
    pairs = x[:, :-1] * K + x[:, 1:]
    freq = torch.bincount(pairs.reshape(-1), minlength=K * K).double()
    freq = freq / freq.sum()
    true = (pi[:, None].double() * P.double()).reshape(-1)
    return float(0.5 * (freq - true).abs().sum())
