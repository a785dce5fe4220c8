"""The precision of the products a scatter was accumulated with, and the Gram update that records it.

PRODUCT_ROUNDING: unit roundoff of each kind of product; a state remembers the least precise kind
any of its updates used (``Moments.product_precision``), from which ``Moments.rounding_level``
sets the level below which an eigenvalue is rounding."""

from __future__ import annotations

import torch

from ..._core.backend import backend_for
from ..._core.precision import UNIT_ROUNDOFF
from . import _torch as _gram_torch


#: Unit roundoff of one product in each accumulation precision, least to most rounding.
PRODUCT_ROUNDING = {"float64": UNIT_ROUNDOFF["float64"], "float32": UNIT_ROUNDOFF["ieee"],
                    "tf32x3": UNIT_ROUNDOFF["tf32x3"], "tf32": UNIT_ROUNDOFF["tf32"], "bf16": UNIT_ROUNDOFF["bf16"]}
#: Eigenvalues below ROUNDING_FACTOR * roundoff * lambda_max are rounding, not variance. The null-space
#: eigenvalues of fp32-accumulated covariances measure 0.3 to 0.7 roundoffs of lambda_max (N from 60
#: to 20 000, d from 200 to 1500, data in a subspace): a factor 4 leaves a margin of 6 and keeps real
#: eigenvalues that fp32 products still resolve (zeroing one costs sqrt(lambda / trace) at sigma = 0).
ROUNDING_FACTOR = 4
#: What a version-1 state (no record) is assumed to hold: the worst its kernel mode could give.
_CONSERVATIVE = {"ieee": "float32", "tf32x3": "tf32x3", "tf32": "tf32"}


def _worst(a: str | None, b: str | None) -> str | None:
    order = list(PRODUCT_ROUNDING)
    known = [p for p in (a, b) if p is not None]
    return max(known, key=order.index) if known else None


def _torch_products(a: torch.Tensor) -> str:
    """The precision of PyTorch's matmul on ``a``'s dtype and device, given the process's settings."""
    if a.dtype == torch.float64:
        return "float64"
    mode = torch.get_float32_matmul_precision()
    if a.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        mode = "high" if mode == "highest" else mode
    return {"highest": "float32", "high": "tf32", "medium": "bf16"}[mode]


def _gram_accumulate(out, a, a_shift, b=None, b_shift=None, *, precision) -> str:
    """out += (a - a_shift)^T (b - b_shift) on the backend that suits ``a`` (float64: PyTorch).

    Returns the precision the products were computed in (a key of PRODUCT_ROUNDING)."""
    if a.dtype != torch.float64 and backend_for(a) == "triton":
        from ...kernels.moments import centered_gram_accumulate
        convert = lambda t: None if t is None else t.to(torch.float32).contiguous()  # noqa: E731
        centered_gram_accumulate(out, convert(a), convert(a_shift), convert(b), convert(b_shift),
                                 precision=precision)
        # The interpreter (CPU tensors) ignores input_precision: its products are exact fp32.
        return {"ieee": "float32", "tf32x3": "tf32x3", "tf32": "tf32"}[precision] if a.is_cuda else "float32"
    _gram_torch.centered_gram_accumulate(out, a, a_shift, b, b_shift)
    return _torch_products(a)


def _upper_to_symmetric(upper: torch.Tensor) -> torch.Tensor:
    return torch.triu(upper) + torch.triu(upper, 1).T
