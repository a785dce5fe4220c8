"""Nearest neighbours on CPU: fastgauss against torch.cdist + topk, side by side in one run.

    pytest benchmarks/neighbors/bench_neighbors.py --benchmark-group-by=group --benchmark-columns=min,mean,rounds

Rows per group (B = 64 queries, N = 50 000 training rows, d = 3072, k = 2):
  cdist+topk       torch.cdist(x, data).topk(k, largest=False): fp32, not exact
  fastgauss        nearest_neighbors with the data's centred norms cached (repeated calls on one
                   training set: GL scores and memorization ratios of many sample batches)
  fastgauss-cold   the first call on a data tensor: mean and centred norms computed (then cached)
Every fastgauss result is asserted equal (indices) to a float64 brute force. The issue's goal,
asserted in ``test_speedup_over_cdist_topk``: at least 1.5x faster than cdist + topk, exact.
"""

import time

import pytest
import torch

import fastgauss

N, D, B, K = 50_000, 3072, 64, 2
#: Issue 10's goal for the cached call against cdist + topk in the same run.
GOAL = 1.5


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(N, D, generator=g) * 2 - 1
    # queries near training points (as generated samples of a memorizing model would be) and fresh ones
    near = data[torch.randint(0, N, (B // 2,), generator=g)] + 0.3 * torch.randn(B // 2, D, generator=g)
    fresh = torch.rand(B - B // 2, D, generator=g) * 2 - 1
    x = torch.cat([near, fresh])
    return x, data, float64_brute_force(x, data, K)


def float64_brute_force(x, data, k, chunk=4096, extra=8):
    """Indices [B, k] of the nearest rows in float64, ties to the lower index: float64 products
    pick k + extra candidates (their error, ~1e-12 here, is far below any gap this data has, which
    the assertion below checks), then direct float64 differences rank them."""
    x64 = x.double()
    best_d, best_i = [], []
    for start in range(0, data.shape[0], chunk):
        y = data[start:start + chunk].double()
        d2 = (x64**2).sum(1, keepdim=True) + (y**2).sum(1) - 2 * x64 @ y.T
        vals, pos = d2.topk(k + extra, dim=1, largest=False)
        best_d.append(vals)
        best_i.append(pos + start)
    vals, pos = torch.cat(best_d, 1).topk(k + extra, dim=1, largest=False)
    cand = torch.cat(best_i, 1).gather(1, pos).sort(dim=1).values
    exact = ((data[cand].double() - x64[:, None]) ** 2).sum(-1)
    order = exact.sort(dim=1, stable=True).indices
    ranked = exact.gather(1, order)
    assert bool((ranked[:, k] - ranked[:, k - 1] > 1e-6).all()), "a near tie: float64 products cannot decide it"
    return cand.gather(1, order[:, :k])


def _cdist_topk(x, data):
    return torch.cdist(x, data).topk(K, dim=1, largest=False)


@pytest.mark.parametrize("method", ["cdist+topk", "fastgauss", "fastgauss-cold"])
def test_nearest_neighbors(benchmark, problem, method):
    x, data, expected = problem
    benchmark.group = f"nearest neighbours N={N} d={D} B={B} k={K}"
    if method == "cdist+topk":
        dist, idx = benchmark.pedantic(lambda: _cdist_topk(x, data), rounds=3, warmup_rounds=1)
        benchmark.extra_info["exact"] = bool(torch.equal(idx, expected))
        return
    if method == "fastgauss":
        dist, idx = benchmark.pedantic(lambda: fastgauss.nearest_neighbors(x, data, k=K), rounds=3, warmup_rounds=1)
    else:  # a fresh view of the data each round: a new tensor object, so nothing is cached for it
        dist, idx = benchmark.pedantic(lambda rows: fastgauss.nearest_neighbors(x, rows, k=K),
                                       setup=lambda: ((data.view_as(data),), {}), rounds=2)
    assert torch.equal(idx, expected)


def _best_of(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_speedup_over_cdist_topk(problem, capsys):
    """Interleaved rounds of both in one process (the machine's load hits both alike): the cached
    fastgauss call is exact and at least GOAL times faster than cdist + topk."""
    x, data, expected = problem
    _, idx = fastgauss.nearest_neighbors(x, data, k=K)  # warms the cache
    assert torch.equal(idx, expected)
    ours, theirs = [], []
    for _ in range(3):
        ours.append(_best_of(lambda: fastgauss.nearest_neighbors(x, data, k=K), 1))
        theirs.append(_best_of(lambda: _cdist_topk(x, data), 1))
    ratio = min(theirs) / min(ours)
    with capsys.disabled():
        print(f"\nnearest_neighbors B={B} N={N} d={D}: fastgauss {min(ours):.3f} s, cdist+topk {min(theirs):.3f} s, "
              f"ratio {ratio:.2f}x (goal {GOAL}x)")
    assert ratio >= GOAL
