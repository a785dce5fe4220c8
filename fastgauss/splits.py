"""Deterministic subsets, disjoint splits and shuffled training batches of a dataset tensor."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def subset(data: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """n rows of data: [n, ...], the same ones for the same seed (the first n of a seeded permutation)."""
    if not (isinstance(n, int) and 1 <= n <= data.shape[0]):
        raise ValueError(f"n: asked for {n} samples but the dataset has {data.shape[0]}")
    return data[_permutation(data.shape[0], seed)[:n].to(data.device)]


def split_disjoint(data: torch.Tensor, parts: int = 2, *, seed: int = 0) -> list[torch.Tensor]:
    """``parts`` disjoint pieces of equal size (the remainder dropped), e.g. two halves to train two models."""
    if not (isinstance(parts, int) and 1 <= parts <= data.shape[0]):
        raise ValueError(f"parts: expected from 1 to the {data.shape[0]} samples, got {parts!r}")
    size = data.shape[0] // parts
    order = _permutation(data.shape[0], seed).to(data.device)
    return [data[order[i * size:(i + 1) * size]] for i in range(parts)]


def training_batches(data: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled batches [batch_size, ...] (each epoch a new permutation from ``generator``).

    A dataset smaller than batch_size is sampled with repetition inside the batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    n = data.shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        if n < batch_size:
            order = order.repeat(-(-batch_size // n))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield data[order[start:start + batch_size].to(data.device)]
