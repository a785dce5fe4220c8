"""Nearest neighbours and memorization metrics against a brute-force float64 search."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastgauss
from fastgauss import reference as ref
from helpers import rel_err


@given(n=st.sampled_from([1, 7, 63, 129, 1000]), d=st.sampled_from([1, 7, 63, 129]), batch=st.integers(1, 12),
       k=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_matches_brute_force_float64(n, d, batch, k, seed):
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(n, d, generator=g) * 2 - 1
    x = torch.rand(batch, d, generator=g) * 2 - 1
    dist, idx = fastgauss.nearest_neighbors(x, data, k=k)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, k)
    assert torch.equal(idx, ref_idx)
    assert rel_err(dist, ref_dist) < 1e-6


@pytest.mark.parametrize("n,d,batch,k", [(130, 7, 3, 3), (64, 129, 33, 5), (600, 5, 2, 40), (150, 40, 70, 3)])
def test_triton_candidates_match_brute_force(monkeypatch, n, d, batch, k):
    """The fused distance + running top-k kernel (interpreted: its sorts are slow, sizes small).
    130 rows: two full tiles and a ragged one; 33 queries: two query blocks; 600 rows: several
    tiles per program (the running merge), k = 40 of 64 slots; (150, 40, 70): past the kernel's
    tile (BLOCK_M = 64 queries, BLOCK_N = 64 rows, BLOCK_K = 16 features) in every dimension at once."""
    from fastgauss.kernels import neighbors as kernel

    assert (kernel.BLOCK_M, kernel.BLOCK_N, kernel.BLOCK_K) == (64, 64, 16)  # what the sizes reach past
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    g = torch.Generator().manual_seed(n)
    data = torch.rand(n, d, generator=g) * 2 - 1
    data[7] = data[3]  # an exact tie: the lower index must come first
    x = torch.cat([data[3:4] + 1e-3, torch.rand(batch - 1, d, generator=g) * 2 - 1])
    dist, idx = fastgauss.nearest_neighbors(x, data, k=k)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, k)
    assert torch.equal(idx, ref_idx)
    assert rel_err(dist, ref_dist) < 1e-6


def test_ties_go_to_the_lower_index(backend):
    data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    dist, idx = fastgauss.nearest_neighbors(torch.zeros(1, 2), data, k=5)
    assert idx.tolist() == [[0, 1, 2, 3, 4]] and torch.allclose(dist, torch.ones(1, 5))
    dist, idx = fastgauss.nearest_neighbors(torch.tensor([[2.0, 0.0]]), data, k=2)
    assert idx.tolist() == [[0, 4]]  # duplicates: the lower index first


def test_close_candidates_are_ranked_exactly():
    """Points 1e-4 apart near a large offset: the product formula alone cannot order them."""
    base = torch.full((1, 64), 50.0)
    data = torch.cat([base + 1e-3, base + 2e-3, base - 5e-4, torch.randn(500, 64)])
    dist, idx = fastgauss.nearest_neighbors(base, data, k=3)
    assert idx.tolist() == [[2, 0, 1]]


def test_gl_score_and_memorization_ratio():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(200, 16, generator=g) + 0.5
    copies = data[:10] + 1e-4 * torch.randn(10, 16, generator=g)
    fresh = torch.rand(10, 16, generator=g) + 0.5
    assert fastgauss.memorization_ratio(copies, data) == 1.0
    assert fastgauss.memorization_ratio(fresh, data) < 0.5
    assert fastgauss.gl_score(copies, data) < 1e-3
    dist, _ = ref.nearest_neighbors(fresh, data, 1)
    expected = (dist[:, 0] / fresh.double().norm(dim=1)).mean().item()
    assert fastgauss.gl_score(fresh, data) == pytest.approx(expected, rel=1e-6)


def test_bad_input():
    data = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"k: .*N = 5"):
        fastgauss.nearest_neighbors(torch.randn(2, 3), data, k=6)
    with pytest.raises(ValueError, match="non-empty"):
        fastgauss.nearest_neighbors(torch.randn(2, 3), torch.empty(0, 3))
    with pytest.raises(ValueError, match=r"x: has 4 features"):
        fastgauss.nearest_neighbors(torch.randn(2, 4), data)
    with pytest.raises(ValueError, match="non-finite"):
        fastgauss.nearest_neighbors(torch.tensor([[float("nan"), 0.0, 0.0]]), data)


# ---------------------------------------------------------------- cache, near ties, kernel writes, strides (issue 10)


def test_in_place_changes_of_the_data_are_seen(backend, monkeypatch):
    """The centred norms are cached on the data tensor's identity and version: a second call
    reuses them, an in-place change recomputes them, and NaN written later is an error."""
    from fastgauss._core import rows as _rows

    g = torch.Generator().manual_seed(3)
    data = torch.rand(140, 20, generator=g) * 2 - 1
    x = torch.rand(5, 20, generator=g) * 2 - 1
    calls = []
    norms = _rows.centred_square_norms
    monkeypatch.setattr(_rows, "centred_square_norms", lambda *a: calls.append(1) or norms(*a))
    for _ in range(2):
        dist, idx = fastgauss.nearest_neighbors(x, data, k=3)
        assert torch.equal(idx, ref.nearest_neighbors(x, data, 3)[1])
    assert len(calls) == 1  # cached
    data.mul_(2).add_(5)
    x = x * 2 + 5
    x[0] = data[123] + 1e-3  # a query the old norms would misplace
    dist, idx = fastgauss.nearest_neighbors(x, data, k=3)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, 3)
    assert len(calls) == 2 and torch.equal(idx, ref_idx) and idx[0, 0] == 123
    assert rel_err(dist, ref_dist) < 1e-6
    data[:, 7][100] = float("nan")  # through a view: the version counter is shared
    with pytest.raises(ValueError, match="data: 1 non-finite"):
        fastgauss.nearest_neighbors(x, data, k=3)


def test_many_near_ties_get_more_candidates_until_exact(backend):
    """70 exact copies of one row and a query next to them, margin 1: the fp32 keys cannot pick
    the lowest indices among the copies; the candidates grow (past the kernel's 64 slots) until
    every copy is in, and the float64 re-rank returns the two lowest."""
    g = torch.Generator().manual_seed(4)
    data = torch.rand(160, 24, generator=g) * 2 - 1
    copies = torch.randperm(160, generator=g)[:70]
    data[copies] = data[copies[0]].clone()
    x = torch.cat([data[copies[:1]] + 1e-3, torch.rand(2, 24, generator=g) * 2 - 1])
    dist, idx = fastgauss.nearest_neighbors(x, data, k=2, margin=1)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, 2)
    assert torch.equal(idx, ref_idx) and idx[0].tolist() == copies.sort().values[:2].tolist()
    assert rel_err(dist, ref_dist) < 1e-6


def test_strided_and_non_contiguous_inputs(backend):
    """Queries transposed and sliced, data rows with a stride wider than d (kept as is) and data
    with a column stride (copied): the same neighbours as the float64 brute force."""
    g = torch.Generator().manual_seed(5)
    wide = torch.rand(150, 50, generator=g) * 2 - 1
    row_strided = wide[:, 3:40]  # stride (50, 1)
    col_strided = (torch.rand(150, 74, generator=g) * 2 - 1)[:, ::2]  # stride (74, 2)
    queries = (torch.rand(37, 9, generator=g) * 2 - 1).T[:, :37][::2]  # [5, 37], neither dim contiguous
    for data in (row_strided, col_strided):
        assert not data.is_contiguous()
        dist, idx = fastgauss.nearest_neighbors(queries, data, k=4)
        ref_dist, ref_idx = ref.nearest_neighbors(queries, data, 4)
        assert torch.equal(idx, ref_idx) and rel_err(dist, ref_dist) < 1e-6


@pytest.mark.kernel
@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
def test_kernel_writes_every_candidate_slot(precision):
    """Poisoned key buffer (-1, which no key can be): every slot of every split and query is
    written, and each split holds the 64 smallest fp32 distances of its own rows."""
    from fastgauss.kernels import neighbors as kernel

    g = torch.Generator().manual_seed(6)
    n, d, b, splits = 200, 21, 67, 3  # two query blocks; 67 rows per split: a full tile and a ragged one
    data = torch.rand(n, d, generator=g) * 2 - 1
    center = data.double().mean(0)
    xc = (torch.rand(b, d, generator=g) * 2 - 1).double() - center
    y_norms = ((data.double() - center) ** 2).sum(1).float()
    keys = torch.full((splits, b, kernel.BLOCK_N), -1, dtype=torch.int64)
    rows_per_split = -(-n // splits)
    centre, transposed = kernel.CONFIGS[precision].centre_rows, kernel.CONFIGS[precision].queries_t
    consts = (xc**2).sum(1) + (0 if centre else 2 * xc @ center)  # |a|^2 (+ 2 a.c on raw rows)
    queries = xc.float().T.contiguous() if transposed else xc.float()  # [d, B] for the transposed products
    kernel._nn_candidates_kernel[(-(-b // kernel.BLOCK_M), splits)](
        queries, consts.float(), data, center.float(), y_norms, keys, b, n, d, rows_per_split,
        data.stride(0), PRECISION=precision, CENTRE_ROWS=centre, QUERIES_T=transposed, BLOCK_M=kernel.BLOCK_M,
        BLOCK_N=kernel.BLOCK_N, BLOCK_K=kernel.BLOCK_K)
    assert bool((keys >= 0).all()), "a slot was not written"
    exact = torch.cdist(xc, data.double() - center) ** 2
    for s in range(splits):
        lo, hi = s * rows_per_split, min(n, (s + 1) * rows_per_split)
        idx = keys[s] & 0xFFFFFFFF
        assert bool(((idx >= lo) & (idx < hi)).all())
        want = exact[:, lo:hi].topk(kernel.BLOCK_N, dim=1, largest=False).values
        got = (keys[s] >> 32).to(torch.int32).view(torch.float32).double()
        assert rel_err(got, want) < 1e-5


def test_float64_queries_on_fp32_data_and_a_loose_matmul_setting(monkeypatch):
    """float64 queries against fp32 data (the cached fp32 norms' rounding enters the bound), and a
    process that allows bf16 matmuls (read through a patched getter, not set): still exact."""
    g = torch.Generator().manual_seed(8)
    data = torch.rand(90, 33, generator=g) * 2 - 1
    x = torch.cat([data[5:6].double() + 1e-9, torch.rand(3, 33, generator=g, dtype=torch.float64)])
    dist, idx = fastgauss.nearest_neighbors(x, data, k=3)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, 3)
    assert torch.equal(idx, ref_idx) and dist.dtype == torch.float64 and rel_err(dist, ref_dist) < 1e-12
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    dist, idx = fastgauss.nearest_neighbors(x.float(), data, k=3)
    assert torch.equal(idx, ref_idx)


@pytest.mark.kernel
def test_transposed_products_match_the_direct_ones():
    """ieee: the candidates from (Y' Xc^T)^T (the launched form) equal those from x' Y'^T (the form
    before, ``IEEE_DIRECT``): same indices, distances to fp32 rounding, poisoned outputs filled."""
    from fastgauss.kernels import neighbors as kernel

    g = torch.Generator().manual_seed(13)
    n, d, b = 301, 45, 70
    data = torch.rand(n, d, generator=g) * 2 - 1 + 2.0
    center = data.double().mean(0)
    xc = ((torch.rand(b, d, generator=g) * 2 - 1 + 2.0).double() - center).float()
    y_norms = ((data.double() - center) ** 2).sum(1).float()
    args = (xc, (xc.double() ** 2).sum(1).float(), data, center.float(), y_norms, 5)
    assert kernel.CONFIGS["ieee"].queries_t and not kernel.IEEE_DIRECT.queries_t
    launched = kernel.nn_candidates(*args, precision="ieee")
    direct = kernel.nn_candidates(*args, precision="ieee", config=kernel.IEEE_DIRECT)
    assert torch.isfinite(launched[0]).all() and torch.equal(launched[1], direct[1])
    assert rel_err(launched[0], direct[0]) < 1e-6
    exact = (torch.cdist(xc.double(), data.double() - center) ** 2).topk(5, dim=1, largest=False)
    assert torch.equal(launched[1], exact.indices) and rel_err(launched[0], exact.values) < 1e-5
