"""Validation of a Gaussian (mean, eigenvectors, eigenvalues), and a cache of those already validated.

The public op validates its Gaussian on every call (shapes, finiteness, eigenvalues >= 0, orthonormal
eigenvectors: O(d r) work, most of the op's Python overhead at small batches). ``validated_once``
skips that for the very tensors it validated before, unchanged since: the cache holds weak
references and each tensor's version counter, so another tensor, or the same one changed in place,
is validated afresh and nothing stale passes.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from ..._core.arrays import check_finite, inspectable

#: How many validated Gaussians are remembered (most recently used).
CACHE_ENTRIES = 8
_validated: OrderedDict = OrderedDict()


def validated_once(mean: torch.Tensor, eigvecs: torch.Tensor, eigvals: torch.Tensor, d: int) -> None:
    """``validate_gaussian``, skipped for a triple of tensors validated before and unchanged since."""
    tensors = (mean, eigvecs, eigvals)
    if not all(inspectable(t) for t in tensors):  # inside torch.func: validate as usual, cache nothing
        validate_gaussian(mean, eigvecs, eigvals, d)
        return
    key = (d, *((id(t), t._version, t.data_ptr(), t.shape, t.stride(), t.dtype, t.device) for t in tensors))
    refs = _validated.get(key)
    if refs is not None and all(r() is t for r, t in zip(refs, tensors)):
        _validated.move_to_end(key)
        return
    validate_gaussian(mean, eigvecs, eigvals, d)
    _validated[key] = tuple(weakref.ref(t) for t in tensors)
    while len(_validated) > CACHE_ENTRIES:
        _validated.popitem(last=False)


def validate_gaussian(mean: torch.Tensor, eigvecs: torch.Tensor, eigvals: torch.Tensor, d: int | None = None):
    """ValueError unless mean: [d], eigvecs: [d, r], eigvals: [r] >= 0 (to rounding), all finite."""
    d = mean.numel() if d is None else d
    if mean.numel() != d:
        raise ValueError(f"mean: has {mean.numel()} features but x has {d}")
    if eigvecs.dim() != 2 or eigvecs.shape[0] != d:
        raise ValueError(f"eigvecs: expected shape [{d}, r], got {tuple(eigvecs.shape)}")
    r = eigvecs.shape[1]
    if eigvals.shape != (r,):
        raise ValueError(f"eigvals: expected shape [{r}] to match eigvecs [{d}, {r}], got {tuple(eigvals.shape)}")
    for name, t in (("mean", mean), ("eigvecs", eigvecs), ("eigvals", eigvals)):
        check_finite(t, name)
    if r and eigvals.min() < -1e-6 * max(eigvals.abs().max().item(), 1e-30):
        raise ValueError(f"eigvals: negative eigenvalue {eigvals.min().item():g} beyond rounding: "
                         "not a valid covariance")
    if r:
        _check_orthonormal(eigvecs)


def _check_orthonormal(eigvecs: torch.Tensor) -> None:
    """ValueError unless U^T U = I to the rounding of U's dtype, tested on two fixed random probes p:
    |U^T U p - p| <= tol |p| (O(d r), not the r x r Gram; a U^T U != I passes only for p in its
    eigenvalue-1 space, which fixed Gaussian probes miss almost surely)."""
    r = eigvecs.shape[1]
    probes = torch.randn(r, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probes = probes.to(eigvecs.device)
    u = eigvecs.to(torch.float64)
    err = (u.T @ (u @ probes) - probes).norm(dim=0) / probes.norm(dim=0)
    tol = 3e-2 if eigvecs.element_size() <= 2 else 1e-3
    worst = float(err.max())
    if not worst <= tol:
        raise ValueError(f"eigvecs: columns are not orthonormal (|U^T U p - p| / |p| = {worst:.3g} for a random "
                         f"p, tolerance {tol:g}); pass the eigenvectors of eigh (or orthonormalize them with "
                         "torch.linalg.qr)")
