"""Benchmarks share one dataset per session; CPU-only, run with `pytest benchmarks`."""

import os

import pytest
import torch

torch.set_num_threads(max(1, min(int(os.environ.get("FASTGAUSS_BENCH_THREADS", "2")), os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cifar_like():
    """[20 000, 3072] float32: the size of a CIFAR-10 subset, Gaussian with a spread spectrum."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(0, -3, 3072)
    return torch.randn(20_000, 3072, generator=g) * scales + 0.1
