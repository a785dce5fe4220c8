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


@pytest.mark.parametrize("n,d,batch,k", [(130, 7, 3, 3), (64, 129, 33, 5), (600, 5, 2, 40)])
def test_triton_candidates_match_brute_force(monkeypatch, n, d, batch, k):
    """The fused distance + running top-k kernel (interpreted: its sorts are slow, sizes small).
    130 rows: two full tiles and a ragged one; 33 queries: two query blocks; 600 rows: several
    tiles per program (the running merge), k = 40 of 64 slots."""
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
