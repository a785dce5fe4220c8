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


@pytest.mark.parametrize("precision", kernel.PRECISIONS)
def test_row_splits_and_several_launches_sum_exactly(monkeypatch, precision):
    """Few tiles -> rows split over programs; a small row cap and a scratch of 3 slices -> 7 launches
    of 3 splits (the last one ragged)."""
    monkeypatch.setitem(kernel.MAX_ROWS_PER_PROGRAM, precision, 48)
    monkeypatch.setattr(kernel, "_SPLIT_SCRATCH_BYTES", 3 * 4 * 5 * 5)
    plan = kernel.launch_plan(1000, 5, 5, True, precision, 2)
    assert (plan.splits, plan.rows_per_split, plan.launches) == (3, 48, 7)
    a = torch.randn(1000, 5) + 2
    shift = a.mean(0)
    out = torch.zeros(5, 5, dtype=torch.float64)
    kernel.centered_gram_accumulate(out, a, shift, precision=precision)
    assert rel_err(_upper(out), _upper(ref.centered_gram(a, shift))) < 1e-6


def test_launch_plan_fills_the_scratch_at_the_target_shape():
    """N = 50 000, d = 3072 on 132 SMs (issue 14): 2 launches of 300 tiles x 7 splits (2100
    programs, 16 waves at 99.4 %) where one split per launch took 13 launches of 300; the
    4096-row accumulation cap per program and the 256 MB scratch still hold."""
    plan = kernel.launch_plan(50_000, 3072, 3072, True, "ieee", 132)
    assert (plan.config, plan.tiles, plan.splits, plan.launches) == ("large", 300, 7, 2)
    assert plan.rows_per_split <= kernel.MAX_ROWS_PER_PROGRAM["ieee"] and plan.rows_per_launch * 2 >= 50_000
    assert plan.splits * 3072 * 3072 * 4 <= kernel._SPLIT_SCRATCH_BYTES
    assert 2100 / (132 * 16) > 0.99
    tf32 = kernel.launch_plan(50_000, 3072, 3072, True, "tf32", 132)
    assert (tf32.splits, tf32.launches) == (4, 1) and tf32.rows_per_split <= kernel.MAX_ROWS_PER_PROGRAM["tf32"]
    for name, _, int_args, grid in kernel.gate_targets():  # the gate compiles what the launcher runs
        precision = name.split(",")[1]
        plan = kernel.launch_plan(50_000, 3072, 3072, True, precision, 132)
        assert grid == (plan.tiles, plan.splits) and int_args["rows_per_split"] == plan.rows_per_split


@given(n=st.integers(1, 300_000), da=st.integers(1, 13_000), db=st.integers(1, 13_000), sym=st.booleans(),
       precision=st.sampled_from(kernel.PRECISIONS), sms=st.sampled_from([2, 132]))
def test_launch_plan_covers_every_row_within_the_caps(n, da, db, sym, precision, sms):
    db = da if sym else db
    plan = kernel.launch_plan(n, da, db, sym, precision, sms)
    assert plan.rows_per_split <= kernel.MAX_ROWS_PER_PROGRAM[precision] and plan.rows_per_split % 16 == 0
    assert (plan.launches - 1) * plan.rows_per_launch < n <= plan.launches * plan.rows_per_launch
    assert plan.splits == 1 or plan.splits * 4 * da * db <= kernel._SPLIT_SCRATCH_BYTES
    cfg = kernel.CONFIGS[plan.config]
    assert plan.tiles == kernel._num_tiles(da, db, cfg.block, sym)


@pytest.mark.parametrize("n", [1, 17, 300])
def test_tf32_pre_pass_holds_the_kernels_own_centred_values(n):
    """The "tf32" path's centred, transposed copy: bit for bit the fp32 a - shift the kernel forms,
    on strided rows; the padding columns past n are never read (NaN there changes nothing)."""
    g = torch.Generator().manual_seed(n)
    a = (torch.randn(n, 130, generator=g) * 3 + 50)[:, ::2]  # [n, 65], column stride 2
    shift = a.double().mean(0).float()
    ct = kernel._centred_transposed(a, shift)
    ld = -(-n // 16) * 16
    assert ct.shape == (65, n) and ct.stride() == (ld, 1)
    assert torch.equal(ct, (a - shift).T)
    ct.as_strided((65, ld), (ld, 1))[:, n:] = float("nan")
    out = poisoned(1, 65, 65)
    kernel._centered_gram_kernel[(kernel._num_tiles(65, 65, 64, True), 1)](
        ct.T, ct.T, shift, shift, out, n, n, 65, 65, 1, ct.stride(0), 1, ct.stride(0),
        out.stride(0), out.stride(1), SYMMETRIC=True, PRECISION="tf32", PRECENTRED=True,
        BLOCK_I=64, BLOCK_J=64, BLOCK_K=16)
    expected = ref.centered_gram(a, shift)
    tile = torch.arange(65) // 64
    written = tile[:, None] <= tile[None, :]
    assert torch.isnan(out[0][~written]).all() and rel_err(out[0][written], expected[written]) < 1e-6


@pytest.mark.parametrize("config", sorted(kernel.CONFIGS))
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("tiles_per_side", [1, 2, 5, 9])
@pytest.mark.parametrize("precentred", [False, True])
def test_every_tile_is_written(symmetric, tiles_per_side, config, precentred):
    """NaN-poisoned output: each program must write its whole tile, and no other; every launch
    configuration (the largest, 128 x 128 tiles, included) on sizes past its tiles; rows as they
    come and the "tf32" path's centred transposed copies."""
    cfg = kernel.CONFIGS[config]
    d = cfg.block * tiles_per_side - 3  # ragged last tile
    a = torch.randn(20, d)
    shift = torch.zeros(d)
    if precentred:
        a = kernel._centred_transposed(a, shift).T  # [20, d] view, unit row stride
    out = poisoned(1, d, d)
    tiles = kernel._num_tiles(d, d, cfg.block, symmetric)
    kernel._centered_gram_kernel[(tiles, 1)](
        a, a, shift, shift, out, 20, 20, d, d, a.stride(0), a.stride(1), a.stride(0), a.stride(1),
        out.stride(0), out.stride(1), SYMMETRIC=symmetric, PRECISION="ieee", PRECENTRED=precentred,
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
