"""The interpreter fix: runtime-bound loops run under Triton 3.6 and 3.9 with numpy >= 2.4."""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from fastgauss.kernels import _interpreter_compat as compat


@triton.jit
def _segment_sums(x_ptr, bounds_ptr, out_ptr, BLOCK: tl.constexpr):
    """out[p] = sum of x[bounds[p] : bounds[p + 1]], in a loop whose bounds are loaded."""
    pid = tl.program_id(0)
    start = tl.load(bounds_ptr + pid)
    stop = tl.load(bounds_ptr + pid + 1)
    acc = tl.zeros((BLOCK,), tl.float32)
    for i0 in range(start, stop, BLOCK):
        offs = i0 + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < stop, other=0.0)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


@pytest.mark.parametrize("sizes", [(0, 1, 7, 33), (5,), (16, 16, 2)])
def test_runtime_bound_loop_matches_torch(sizes):
    g = torch.Generator().manual_seed(sum(sizes))
    x = torch.randn(sum(sizes), generator=g)
    bounds = torch.tensor([0, *np.cumsum(sizes)], dtype=torch.int32)
    out = torch.full((len(sizes),), float("nan"))
    _segment_sums[(len(sizes),)](x, bounds, out, BLOCK=8)
    expected = torch.stack([s.sum() for s in torch.split(x, list(sizes))])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_fix_is_installed_exactly_where_the_interpreter_needs_it():
    current = interpreter._patch_lang_tensor
    original = getattr(current, "__wrapped__", current)
    probe = type("_Probe", (), {})
    scope = interpreter._LangPatchScope()
    original(probe, scope)
    own_index = probe.__dict__["__index__"]
    scope.restore()
    one = type("T", (), {"handle": type("H", (), {"data": np.array([3], dtype=np.int32)})})()
    try:
        broken = own_index(one) != 3
    except TypeError:
        broken = True
    assert getattr(current, compat._MARK, False) == broken
    assert compat.apply() == broken  # idempotent, and the same answer again
    assert interpreter._patch_lang_tensor is current


def test_index_squeezes_scalars_of_every_shape():
    for data in (np.int32(4), np.array(4), np.array([4]), np.array([[4]], dtype=np.int64)):
        scalar = type("T", (), {"handle": type("H", (), {"data": data})})()
        assert compat._index(scalar) == 4


def test_the_fix_is_off_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert compat.apply() is False
    assert not compat.interpreting()


@triton.jit
def _xor_and_sort(x_ptr, rows_ptr, cols_ptr, all_ptr, sorted_ptr, M: tl.constexpr, N: tl.constexpr):
    offs = tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]
    x = tl.load(x_ptr + offs)
    tl.store(rows_ptr + tl.arange(0, M), tl.xor_sum(x, 1))
    tl.store(cols_ptr + tl.arange(0, N), tl.xor_sum(x, 0))
    tl.store(all_ptr + tl.arange(0, 1), tl.xor_sum(tl.reshape(x, (M * N,)), 0, keep_dims=True))
    tl.store(sorted_ptr + offs, tl.sort(x, dim=1))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_xor_sum_and_sort_on_the_numpy_path_match_torch(dtype, monkeypatch):
    """xor_sum over each axis and tl.sort (its compare-and-swap stages are xor sums) take the numpy
    path, never the interpreter's per-element loop, and give torch's integers bit for bit."""
    assert compat.apply_xor_reduce() and getattr(interpreter.ReduceOps.apply_impl, compat._XOR_MARK)

    def no_loop(self, input):
        raise AssertionError("the per-element reduce ran for xor_sum")

    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce", no_loop)
    g = torch.Generator().manual_seed(int(dtype == torch.int64))
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (8, 16), generator=g, dtype=dtype)
    x[0, :3] = x[0, 3]  # ties in a sorted row
    rows, cols, every = torch.zeros(8, dtype=dtype), torch.zeros(16, dtype=dtype), torch.zeros(1, dtype=dtype)
    out = torch.zeros_like(x)
    _xor_and_sort[(1,)](x, rows, cols, every, out, M=8, N=16)

    def xor(t, dim):
        acc = t.select(dim, 0).clone()
        for i in range(1, t.shape[dim]):
            acc ^= t.select(dim, i)
        return acc

    assert torch.equal(rows, xor(x, 1)) and torch.equal(cols, xor(x, 0))
    assert torch.equal(every, xor(x.reshape(-1, 1), 0))
    assert torch.equal(out, x.sort(dim=1).values)


def test_xor_path_leaves_other_combine_functions_to_the_interpreter():
    patched = interpreter.ReduceOps.apply_impl
    assert compat.apply_xor_reduce() is True and interpreter.ReduceOps.apply_impl is patched  # idempotent
    assert patched.__wrapped__ is not patched
    x = torch.arange(12, dtype=torch.int32)
    bounds = torch.tensor([0, 5, 12], dtype=torch.int32)
    out = torch.zeros(2)
    _segment_sums[(2,)](x.float(), bounds, out, BLOCK=4)  # tl.sum: the interpreter's own numpy path
    assert out.tolist() == [10.0, 56.0]
