"""The centred Gram Triton kernel (run by the interpreter) against the float64 reference."""

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given
from hypothesis import strategies as st

from fastgauss import reference as ref
from fastgauss.kernels import moments as kernel
from helpers import poisoned, rel_err


def _upper(matrix: torch.Tensor) -> torch.Tensor:
    return torch.triu(matrix.double())


@given(n=st.integers(1, 200), d=st.sampled_from([1, 7, 63, 64, 65, 129]), seed=st.integers(0, 2**31 - 1),
       precision=st.sampled_from(kernel.PRECISIONS))
def test_symmetric_gram_upper_triangle_matches_reference(n, d, seed, precision):
    """Exact fp32 products ("ieee") to fp32 rounding. The "tf32x3" and "tf32" draws check the
    indexing and masking of the same launch only: the interpreter ignores input_precision, so their
    products are exact here too; their accuracy is measured on a GPU by benchmarks/gpu_check.py."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g) * 3 + 100
    shift = a.double().mean(0).float()
    out = torch.randn(d, d, generator=g, dtype=torch.float64)  # accumulates on top of what is there
    expected = out + ref.centered_gram(a, shift)
    kernel.centered_gram_accumulate(out, a, shift, precision=precision)
    assert rel_err(_upper(out), _upper(expected)) < 1e-6


@given(n=st.integers(1, 150), da=st.sampled_from([1, 7, 63, 129]), db=st.sampled_from([2, 64, 130]),
       seed=st.integers(0, 2**31 - 1))
def test_cross_gram_matches_reference(n, da, db, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, da, generator=g) - 3, torch.randn(n, db, generator=g) * 2
    a_shift, b_shift = torch.randn(da, generator=g), torch.randn(db, generator=g)
    out = torch.zeros(da, db, dtype=torch.float64)
    kernel.centered_gram_accumulate(out, a, a_shift, b, b_shift)
    assert rel_err(out, ref.centered_gram(a, a_shift, b, b_shift)) < 1e-6


def test_row_splits_and_several_launches_sum_exactly(monkeypatch):
    """Few tiles -> rows split over programs; a small row cap -> several launches."""
    monkeypatch.setitem(kernel.MAX_ROWS_PER_PROGRAM, "ieee", 48)
    a = torch.randn(1000, 5) + 2
    shift = a.mean(0)
    out = torch.zeros(5, 5, dtype=torch.float64)
    kernel.centered_gram_accumulate(out, a, shift)
    assert rel_err(_upper(out), _upper(ref.centered_gram(a, shift))) < 1e-6


@pytest.mark.parametrize("config", sorted(kernel.CONFIGS))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tiles_per_side", [1, 2, 5, 9])
def test_every_tile_is_written(symmetric, tiles_per_side, config):
    """NaN-poisoned output: each program must write its whole tile, and no other; every launch
    configuration (the largest, 128 x 128 tiles, included) on sizes past its tiles."""
    cfg = kernel.CONFIGS[config]
    d = cfg.block * tiles_per_side - 3  # ragged last tile
    a = torch.randn(20, d)
    shift = torch.zeros(d)
    out = poisoned(1, d, d)
    tiles = kernel._num_tiles(d, d, cfg.block, symmetric)
    kernel._centered_gram_kernel[(tiles, 1)](
        a, a, shift, shift, out, 20, 20, d, d, a.stride(0), a.stride(1), a.stride(0), a.stride(1),
        out.stride(0), out.stride(1), SYMMETRIC=symmetric, PRECISION="ieee",
        BLOCK_I=cfg.block, BLOCK_J=cfg.block, BLOCK_K=cfg.block_k)
    expected = ref.centered_gram(a, shift)
    tile = torch.arange(d) // cfg.block
    written = (tile[:, None] <= tile[None, :]) if symmetric else torch.ones(d, d, dtype=torch.bool)
    assert torch.isnan(out[0][~written]).all(), "a program wrote below the diagonal"
    assert rel_err(out[0][written], expected[written]) < 1e-6


@triton.jit
def _tile_coords_probe(ti_ptr, tj_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ti, tj = kernel._upper_tile_coords(pid)
    tl.store(ti_ptr + pid, ti, mask=pid < n)
    tl.store(tj_ptr + pid, tj, mask=pid < n)


def test_upper_tile_mapping_covers_each_tile_once_up_to_large_grids():
    """Linear program ids -> (ti <= tj), every upper tile once, for 2048 tiles a side."""
    side = 2048
    n = side * (side + 1) // 2
    ti, tj = torch.full((n,), -1, dtype=torch.int32), torch.full((n,), -1, dtype=torch.int32)
    _tile_coords_probe[(triton.cdiv(n, 4096),)](ti, tj, n, BLOCK=4096)
    assert bool((ti >= 0).all() and (ti <= tj).all() and (tj < side).all())
    keys = tj.long() * side + ti.long()
    assert keys.unique().numel() == n  # every upper tile exactly once
