"""Backend choice and array interop."""

import numpy as np
import pytest
import torch

from fastgauss._core.arrays import as_float, as_tensor
from fastgauss._core.backend import backend_for


def test_cpu_tensors_use_torch_by_default(monkeypatch):
    monkeypatch.delenv("FASTGAUSS_BACKEND", raising=False)
    assert backend_for(torch.zeros(2)) == "torch"


def test_forced_backends(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "torch")
    assert backend_for(torch.zeros(2)) == "torch"
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    assert backend_for(torch.zeros(2)) == "triton"  # the interpreter is on in the tests
    monkeypatch.setenv("FASTGAUSS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTGAUSS_BACKEND"):
        backend_for(torch.zeros(2))


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend_for(torch.zeros(2))


def test_numpy_is_zero_copy():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = as_tensor(arr, "x")
    arr[0, 0] = 42
    assert t[0, 0].item() == 42


def test_non_native_byte_order_and_readonly_are_copied():
    arr = np.arange(4, dtype=">f4")
    assert as_tensor(arr, "x").tolist() == [0.0, 1.0, 2.0, 3.0]


def test_dlpack_producer_other_than_numpy():
    class Producer:  # any object with __dlpack__ (cupy arrays on GPU work the same way)
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    src = torch.arange(5.0)
    assert torch.equal(as_tensor(Producer(src), "x"), src)


def test_integer_conversion_is_exact():
    assert as_float(torch.tensor([255], dtype=torch.uint8)).dtype == torch.float32
    assert as_float(torch.tensor([2**40])).dtype == torch.float64
    with pytest.raises(TypeError, match="complex"):
        as_float(torch.zeros(2, dtype=torch.complex64))
