"""Where each op runs: the one place that decides between the Triton kernels and PyTorch.

CUDA tensors go to the Triton kernels, CPU tensors to the PyTorch path. The environment
variable FASTGAUSS_BACKEND=torch|triton forces one; ``triton`` on CPU tensors needs the
Triton interpreter (TRITON_INTERPRET=1, set before triton is imported), which is how the
tests run every kernel without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("torch", "triton")


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def forced_backend() -> str | None:
    value = os.environ.get("FASTGAUSS_BACKEND", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"FASTGAUSS_BACKEND must be one of {', '.join(BACKENDS)} (or unset), got {value!r}")
    return value


def backend_for(x: torch.Tensor, *, triton_dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> str:
    """'triton' or 'torch' for an op whose main operand is ``x``.

    ``triton_dtypes`` lists what the op's kernel takes; other dtypes (float64) use PyTorch
    unless FASTGAUSS_BACKEND=triton insists, which is then an error.
    """
    forced = forced_backend()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if not triton_importable():
            raise RuntimeError("FASTGAUSS_BACKEND=triton but triton is not installed")
        if x.device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError(
                "FASTGAUSS_BACKEND=triton with a CPU tensor needs the Triton interpreter: "
                "set TRITON_INTERPRET=1 before importing triton or fastgauss")
        if x.dtype not in triton_dtypes:
            raise TypeError(f"FASTGAUSS_BACKEND=triton: this kernel takes {triton_dtypes}, got {x.dtype}")
        return "triton"
    if x.device.type == "cuda" and x.dtype in triton_dtypes and triton_importable():
        return "triton"
    return "torch"
