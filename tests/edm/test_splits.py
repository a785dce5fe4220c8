"""Subsets, disjoint splits and training batches."""

import pytest
import torch

from fastgauss.edm.splits import batch_at, split_disjoint, subset, training_batches


def test_subset_is_deterministic_and_checked():
    data = torch.arange(100).reshape(100, 1).float()
    a, b = subset(data, 10, seed=3), subset(data, 10, seed=3)
    assert torch.equal(a, b) and a.unique().numel() == 10
    assert not torch.equal(a, subset(data, 10, seed=4))
    with pytest.raises(ValueError, match="asked for 101 samples but the dataset has 100"):
        subset(data, 101)


def test_disjoint_halves():
    data = torch.arange(11).reshape(11, 1).float()
    left, right = split_disjoint(data)
    assert left.shape[0] == right.shape[0] == 5
    assert set(left.flatten().tolist()).isdisjoint(right.flatten().tolist())


def test_batches_cover_each_epoch_and_are_reproducible():
    data = torch.arange(12).reshape(12, 1).float()
    first = [b.flatten().tolist() for _, b in zip(range(3), training_batches(data, 4, seed=0))]
    again = [b.flatten().tolist() for _, b in zip(range(3), training_batches(data, 4, seed=0))]
    assert first == again and sorted(sum(first, [])) == list(range(12))
    resumed = next(training_batches(data, 4, seed=0, start=2))  # stateless: step 2 is step 2
    assert resumed.flatten().tolist() == first[2]
    second_epoch = sum((batch_at(data, 4, step, seed=0).flatten().tolist() for step in (3, 4, 5)), [])
    assert sorted(second_epoch) == list(range(12)) and second_epoch != sum(first, [])  # a new permutation
    small = next(training_batches(data[:3], 8, seed=0))
    assert small.shape == (8, 1)
