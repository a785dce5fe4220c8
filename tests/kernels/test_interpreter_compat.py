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
