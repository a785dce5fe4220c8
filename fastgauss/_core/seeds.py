"""The one seed-mixing rule: every random stream of a run is its own torch.Generator, never the global RNG."""

from __future__ import annotations

import torch

_MODULUS = 2**63 - 1


def seeded_generator(seed: int, major: int, minor: int = 0) -> torch.Generator:
    """A CPU generator for stream (major, minor) of a run seeded ``seed``: e.g. (step, purpose) in
    training, (epoch, 0) for the batch order, (0, part) for the parts of an analysis. Distinct
    streams of one seed, and one stream across seeds, start from distinct states.

    Example:
        >>> a, b = seeded_generator(0, 3, 1), seeded_generator(0, 3, 1)
        >>> bool(torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b)))
        True
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + major) * 7 + minor) % _MODULUS)
