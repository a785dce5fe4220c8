"""Validation of a Gaussian (mean, eigenvalues, eigenvectors), and a cache of those already validated.

The public op validates its Gaussian on every call (shapes, finiteness, eigenvalues >= 0, orthonormal
eigenvectors: O(d r) work, most of the op's Python overhead at small batches). ``validated_once``
skips that for the very tensors it validated before, unchanged since: the cache holds weak
references and each tensor's version counter, so another tensor, or the same one changed in place,
is validated afresh and nothing stale passes. ``reaches_every_coordinate`` remembers, the same way,
whether each row of an eigenbasis holds a nonzero: what lets the op test x's finiteness on its
coefficients (x - mu) U instead of in a pass over x of its own.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from ..._core.arrays import check_finite, inspectable

#: How many validated Gaussians (and eigenbases) are remembered (most recently used).
CACHE_ENTRIES = 8
_validated: OrderedDict = OrderedDict()
_rows_reached: OrderedDict = OrderedDict()
ORDER = "(mean, eigvals, eigvecs)"


def _remembered(cache: OrderedDict, tensors: tuple, extra, compute):
    """``compute()`` for these very tensors (and ``extra``), unchanged since; else computed and remembered.

    The key is each tensor's identity, version counter, storage, layout, dtype and device; a weak
    reference kept beside it tells a new tensor that reuses a freed one's id. Inference tensors
    have no version counter: for them nothing is remembered.
    """
    if any(t.is_inference() for t in tensors):
        return compute()
    key = (extra, *((id(t), t._version, t.data_ptr(), t.shape, t.stride(), t.dtype, t.device) for t in tensors))
    entry = cache.get(key)
    if entry is not None and all(r() is t for r, t in zip(entry[0], tensors)):
        cache.move_to_end(key)
        return entry[1]
    value = compute()
    cache[key] = (tuple(weakref.ref(t) for t in tensors), value)
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)
    return value


def validated_once(mean: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor, d: int) -> bool:
    """``validate_gaussian``, skipped for a triple of tensors validated before and unchanged since.

    Returns whether eigvals is already its own ``clamp_min(0)`` (no sign bit set: no negatives of
    rounding, no -0.0), so that the caller can skip that copy; False inside torch.func transforms.
    """
    tensors = (mean, eigvals, eigvecs)
    if not all(inspectable(t) for t in tensors):  # inside torch.func: validate as usual, cache nothing
        validate_gaussian(mean, eigvals, eigvecs, d)
        return False

    def validate() -> bool:
        validate_gaussian(mean, eigvals, eigvecs, d)
        return not bool(torch.signbit(eigvals).any())

    return _remembered(_validated, tensors, d, validate)


def reaches_every_coordinate(eigvecs: torch.Tensor) -> bool:
    """Whether every row of U [d, r] holds a nonzero entry (cached per eigenbasis and version).

    Then a NaN or infinity anywhere in a row of x reaches that row's coefficients (x - mu) U even
    through a product that skips zero factors, so a finiteness test of the [B, r] coefficients
    stands for one of the [B, d] input (``ops.gaussian.op``). False inside torch.func transforms.
    """
    if not inspectable(eigvecs):
        return False
    return _remembered(_rows_reached, (eigvecs,), None,
                       lambda: eigvecs.shape[1] > 0 and bool((eigvecs != 0).any(dim=1).all()))


def validate_gaussian(mean: torch.Tensor, eigvals: torch.Tensor, eigvecs: torch.Tensor, d: int | None = None):
    """ValueError unless mean: [d], eigvals: [r] >= 0 (to rounding), eigvecs: [d, r], all finite.

    A Gaussian is passed as (mean, eigvals, eigvecs) everywhere; the shape errors say so, so that
    eigenvectors passed where the eigenvalues belong (or the reverse) are named as such.
    """
    d = mean.numel() if d is None else d
    if mean.numel() != d:
        raise ValueError(f"mean: has {mean.numel()} features but x has {d}")
    if eigvals.dim() != 1:
        raise ValueError(f"eigvals: expected shape [r] (a Gaussian is passed as {ORDER}), got "
                         f"{tuple(eigvals.shape)}" + (": are these the eigenvectors?" if eigvals.dim() == 2 else ""))
    if eigvecs.dim() != 2 or eigvecs.shape[0] != d:
        raise ValueError(f"eigvecs: expected shape [{d}, r] (a Gaussian is passed as {ORDER}), got "
                         f"{tuple(eigvecs.shape)}" + (": are these the eigenvalues?" if eigvecs.dim() == 1 else ""))
    r = eigvecs.shape[1]
    if eigvals.shape != (r,):
        raise ValueError(f"eigvals: expected shape [{r}] to match eigvecs [{d}, {r}] (a Gaussian is passed as "
                         f"{ORDER}), got {tuple(eigvals.shape)}")
    for name, t in (("mean", mean), ("eigvals", eigvals), ("eigvecs", eigvecs)):
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
