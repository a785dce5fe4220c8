"""cupy input through DLPack, with whatever cupy build is importable (cupy-cuda12x or -13x);
without one (or without a GPU) those tests skip, and the protocol itself is still checked
with a minimal DLPack producer on CPU."""

import numpy as np
import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss._core.arrays import as_tensor


class _Producer:
    """Exposes only the DLPack protocol, as cupy does: no numpy or torch type to recognise."""

    def __init__(self, tensor):
        self._tensor = tensor

    def __dlpack__(self, *args, **kwargs):
        return self._tensor.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._tensor.__dlpack_device__()


def _rel(a, b):
    return ((a.double().cpu() - b).norm() / b.norm()).item()


def test_a_bare_dlpack_producer_is_read_without_a_copy():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(301, 13, generator=g) * torch.logspace(0, -2, 13) + 50.0
    view = as_tensor(_Producer(x), "x")
    assert view.data_ptr() == x.data_ptr() and view.shape == x.shape
    m = fastgauss.Moments().update(_Producer(x[:100])).update(_Producer(x[100:]))
    assert _rel(m.covariance(), ref.covariance(x)) < 1e-6


def test_extras_name_both_cupy_builds():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    assert any(req.startswith("cupy-cuda12x") for req in extras["cupy-cuda12"])
    assert any(req.startswith("cupy-cuda13x") for req in extras["cupy-cuda13"])


@pytest.fixture(scope="module")
def cupy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy is installed but sees no GPU")
    except Exception as exc:  # a CUDA build without a driver raises here
        pytest.skip(f"cupy is installed but cannot reach a GPU: {exc}")
    if not torch.cuda.is_available():
        pytest.skip("cupy sees a GPU but torch has no CUDA")
    return cp


def test_cupy_array_is_a_zero_copy_cuda_view(cupy):
    x = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    view = as_tensor(x, "x")
    assert view.is_cuda and view.data_ptr() == x.data.ptr
    assert torch.equal(view.cpu(), torch.arange(12, dtype=torch.float32).reshape(3, 4))


@pytest.mark.parametrize("n,d", [(1, 3), (257, 33), (4099, 130)])
def test_moments_from_cupy_match_float64(cupy, n, d):
    rs = cupy.random.RandomState(n + d)
    x = rs.standard_normal((n, d), dtype=cupy.float32) * cupy.logspace(0, -2, d, dtype=cupy.float32) + 7
    m = fastgauss.Moments()
    for start in range(0, n, 1000):
        m.update(x[start:start + 1000])
    expected = ref.covariance(torch.from_numpy(cupy.asnumpy(x)))
    if n > 1:
        assert _rel(m.covariance(), expected) < 1e-6
    assert m.count == n
    assert np.allclose(cupy.asnumpy(x).mean(0), m.mean.double().cpu().numpy(), atol=1e-5)
