"""Deterministic subsets, disjoint splits and shuffled training batches of a dataset tensor."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .._core.seeds import seeded_generator


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


def batch_at(data: torch.Tensor, batch_size: int, step: int, seed: int = 0) -> torch.Tensor:
    """The training batch of a step: [batch_size, ...], a pure function of (seed, step).

    Each epoch is a fresh permutation seeded by (seed, epoch), the remainder dropped; a dataset
    smaller than batch_size is repeated inside the batch. Being stateless, a resumed run sees
    exactly the batches an uninterrupted one would.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    n = data.shape[0]
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    order = torch.randperm(n, generator=seeded_generator(seed, epoch))
    if n < batch_size:
        order = order.repeat(-(-batch_size // n))
    return data[order[k * batch_size:(k + 1) * batch_size].to(data.device)]


def training_batches(data: torch.Tensor, batch_size: int, seed: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
    """Endless ``batch_at`` batches from step ``start`` on."""
    step = start
    while True:
        yield batch_at(data, batch_size, step, seed)
        step += 1
