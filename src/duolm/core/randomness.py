"""Random draws by row: one random stream per row of a batch, so what a row draws does not depend on
which other rows share its batch.

A sampler's `generator` is a torch.Generator (one stream for the batch, the default) or a
`RowStreams` (a generator per row). Samplers and processes draw through the functions here, which
read either: with RowStreams each row's numbers come from its own generator, in the order and
amount the row would draw alone (batch 1), so a row sampled in a busy batch equals the same row
sampled by itself, draw for draw (a server's seeded requests share batches this way).

    streams = RowStreams([torch.Generator().manual_seed(s) for s in seeds])
    u = rand((B, L), streams, dtype=torch.float64)      # row b: torch.rand((1, L), generator=g_b)
    ids = draw(log_p[mask], at(streams, mask))           # row b's selected positions, from g_b

`at(generator, mask)` narrows the streams to a mask's True positions (row-major, as boolean
indexing orders them): a draw over those positions then takes row b's share from g_b. With a
torch.Generator everything is torch's own call, unchanged.
"""
from __future__ import annotations

import torch


class RowStreams:
    """One torch.Generator per row. counts: how many leading-dimension entries each row owns in the
    next draw (None: as many as the draw's leading size shared equally, e.g. 1 each for (B, L))."""

    def __init__(self, generators: list[torch.Generator], counts: list[int] | None = None):
        self.generators = list(generators)
        self.counts = counts

    def split(self, n: int) -> list[int]:
        """Each row's share of a draw whose leading dimension is n."""
        if self.counts is not None:
            if sum(self.counts) != n:
                raise ValueError(f"a draw of {n} entries over row streams that own {sum(self.counts)}")
            return self.counts
        if n % len(self.generators):
            raise ValueError(f"a draw of {n} entries over {len(self.generators)} row streams")
        return [n // len(self.generators)] * len(self.generators)


def at(generator, mask: torch.Tensor):
    """The streams that draw for the True entries of mask (B, ...), row-major; a torch.Generator (or
    None) as it is."""
    if not isinstance(generator, RowStreams):
        return generator
    return RowStreams(generator.generators, mask.reshape(mask.shape[0], -1).sum(1).tolist())


def _by_row(generator: RowStreams, n: int, make) -> torch.Tensor:
    parts = [make(count, g) for g, count in zip(generator.generators, generator.split(n)) if count]
    return torch.cat(parts) if parts else make(0, generator.generators[0] if generator.generators else None)


def rand(shape, generator=None, *, dtype=None, device=None) -> torch.Tensor:
    """torch.rand(shape), each row's part from its own stream."""
    shape = tuple(shape)
    if not isinstance(generator, RowStreams):
        return torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return _by_row(generator, shape[0], lambda c, g: torch.rand((c, *shape[1:]), generator=g, dtype=dtype,
                                                                 device=device))


def randint(low: int, high: int, shape, generator=None, *, device=None) -> torch.Tensor:
    """torch.randint(low, high, shape), each row's part from its own stream."""
    shape = tuple(shape)
    if not isinstance(generator, RowStreams):
        return torch.randint(low, high, shape, generator=generator, device=device)
    return _by_row(generator, shape[0], lambda c, g: torch.randint(low, high, (c, *shape[1:]), generator=g,
                                                                    device=device))


def multinomial(probs: torch.Tensor, num_samples: int, generator=None) -> torch.Tensor:
    """torch.multinomial over the rows of probs (N, K), each row's part from its own stream."""
    if not isinstance(generator, RowStreams):
        return torch.multinomial(probs, num_samples, generator=generator)
    sizes = generator.split(probs.shape[0])
    chunks = probs.split(sizes)
    out = [torch.multinomial(chunk, num_samples, generator=g)
           for chunk, g, c in zip(chunks, generator.generators, sizes) if c]
    return torch.cat(out) if out else probs.new_zeros(0, num_samples, dtype=torch.long)


__all__ = ["RowStreams", "at", "multinomial", "rand", "randint"]
