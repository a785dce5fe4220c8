"""Streaming moments at d = 3072, N = 20 000 on CPU, side by side in one run.

    pytest benchmarks/moments/bench_moments.py --benchmark-group-by=group --benchmark-columns=min,mean,rounds

fastgauss streams the data in chunks; numpy.cov and torch.cov get the whole array in memory;
scikit-learn's IncrementalPCA.partial_fit is the streaming peer (it keeps a truncated SVD,
so it does more work per sample, but it is what people reach for to stream a covariance).
The goal: fastgauss streaming in chunks at most 1.2x torch.cov's time. Ratios are printed
by pytest-benchmark (relative to the fastest in the group).
"""

import numpy as np
import pytest
import torch

import fastgauss

GROUP = "moments d=3072 N=20000"


def _stream(x: torch.Tensor, chunk: int) -> torch.Tensor:
    m = fastgauss.Moments()
    for part in x.split(chunk):
        m.update(part)
    return m.covariance()


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("chunk", [1000, 4096])
def test_fastgauss_streaming(benchmark, cifar_like, chunk):
    cov = benchmark.pedantic(_stream, args=(cifar_like, chunk), rounds=3, warmup_rounds=1)
    assert cov.shape == (3072, 3072)


@pytest.mark.benchmark(group=GROUP)
def test_torch_cov_in_memory(benchmark, cifar_like):
    cov = benchmark.pedantic(torch.cov, args=(cifar_like.T,), kwargs={"correction": 0}, rounds=3, warmup_rounds=1)
    assert cov.shape == (3072, 3072)


@pytest.mark.benchmark(group=GROUP)
def test_numpy_cov_in_memory(benchmark, cifar_like):
    arr = cifar_like.numpy()
    cov = benchmark.pedantic(np.cov, args=(arr,), kwargs={"rowvar": False, "bias": True}, rounds=2, warmup_rounds=0)
    assert cov.shape == (3072, 3072)


@pytest.mark.benchmark(group=GROUP)
def test_sklearn_incremental_pca_streaming(benchmark, cifar_like):
    decomposition = pytest.importorskip("sklearn.decomposition")
    arr = cifar_like.numpy()

    def fit():
        ipca = decomposition.IncrementalPCA(n_components=256)
        for start in range(0, arr.shape[0], 4096):
            ipca.partial_fit(arr[start:start + 4096])
        return ipca

    ipca = benchmark.pedantic(fit, rounds=1, warmup_rounds=0)
    assert ipca.components_.shape == (256, 3072)
