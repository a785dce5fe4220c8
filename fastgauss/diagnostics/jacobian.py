"""The Jacobian of a denoiser seen through its top singular subspace, and subspace alignment."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._core.arrays import as_float, as_tensor
from .._core.device import same_device
from .tangent_rules import cheaper_tangents
from .jvp import RULE_MIN_ELEMENTS
from .protocol import check_output


def _orthonormal(columns: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(columns)[0]


def jacobian_spectrum(denoiser, x, sigma, k: int, *, oversample: int = 10, iters: int = 8,
                      generator: torch.Generator | None = None):
    """Top-k singular values and vectors of J = dD/dx at one input, by randomized subspace iteration.

    x: one input [*feature_shape] (e.g. ``data[0]``, a 1-channel image [1, H, W] included); the
    denoiser is called on x[None]. A batch of one [1, *feature_shape] is accepted too when the
    denoiser declares its ``feature_shape`` (as the library's denoisers do). Only J v (forward
    mode) and J^T u (reverse mode) are evaluated, k + oversample of them at a time: no d x d
    matrix for a network. Returns (U [d, k], S [k] descending, Vh [k, d]) in the order and
    shapes of ``torch.linalg.svd``: J ~ U diag(S) Vh, float64.

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(300, 1, 4, 4)
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> u, s, vh = fastgauss.jacobian_spectrum(g, data[0], 0.5, k=2, generator=torch.Generator().manual_seed(0))
        >>> tuple(u.shape), tuple(s.shape), tuple(vh.shape)
        ((16, 2), (2,), (2, 16))
    """
    x = as_float(as_tensor(x, "x"))
    declared = getattr(denoiser, "feature_shape", None)
    if declared is not None:
        declared = tuple(declared)
        if x.dim() == len(declared) + 1 and tuple(x.shape[1:]) == declared:
            if x.shape[0] != 1:
                raise ValueError(f"x: expected one input of shape {list(declared)} (e.g. data[0]), got a batch of "
                                 f"{x.shape[0]} (shape {tuple(x.shape)})")
            x = x[0]
        elif tuple(x.shape) != declared:
            raise ValueError(f"x: expected one input of shape {list(declared)} (the denoiser's feature_shape), "
                             f"got shape {tuple(x.shape)}")
    d = x.numel()
    if not (isinstance(k, int) and 1 <= k <= d):
        raise ValueError(f"k: expected an integer from 1 to d = {d}, got {k!r}")
    width = min(d, k + oversample)

    def f(flat):  # [d] -> [d]
        inp = flat.reshape(1, *x.shape)
        return check_output(denoiser(inp, sigma), inp, sigma).reshape(-1)

    flat = x.reshape(-1)
    try:
        with torch.no_grad():
            f(flat)  # one plain call first: a shape the denoiser cannot take is the caller's, said so here
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"x: the denoiser failed on x[None] of shape {(1, *x.shape)}: jacobian_spectrum takes one "
                         f"input [*feature_shape] (e.g. data[0]), not a batch ({type(exc).__name__}: {exc})") from exc
    with sdpa_kernel(SDPBackend.MATH):  # fused attention kernels have no forward-mode derivative
        return _randomized_svd(f, flat, d, k, width, iters, generator)


def _randomized_svd(f, flat, d, k, width, iters, generator):
    jvp_vmapped = torch.func.vmap(lambda t: torch.func.jvp(f, (flat,), (t.to(flat.dtype),))[1])

    def jvp_many(probes):  # [n, d] -> [n, d]
        with cheaper_tangents(probes.shape[0], RULE_MIN_ELEMENTS):
            return jvp_vmapped(probes)
    _, vjp_fn = torch.func.vjp(f, flat)
    vjp_many = torch.func.vmap(lambda t: vjp_fn(t.to(flat.dtype))[0])
    probes = torch.randn(d, width, generator=generator, dtype=torch.float64).to(flat.device)
    q = _orthonormal(jvp_many(probes.T).T.double())  # range of J
    for _ in range(iters):  # power iterations sharpen the top of the spectrum
        q = _orthonormal(vjp_many(q.T).T.double())
        q = _orthonormal(jvp_many(q.T).T.double())
    small = vjp_many(q.T).double()  # [width, d] = Q^T J
    u_small, s, vh = torch.linalg.svd(small, full_matrices=False)
    return (q @ u_small)[:, :k], s[:k], vh[:k]


def subspace_alignment(a, b) -> torch.Tensor:
    """Cosines of the principal angles between span(a) and span(b), largest first.

    a: [d, k1], b: [d, k2] (any bases, orthonormalized here). Returns [min(k1, k2)]; all 1
    when one subspace contains the other.

    >>> import torch, fastgauss
    >>> eye = torch.eye(4)
    >>> fastgauss.subspace_alignment(eye[:, :2], eye[:, :3])     # span(e1, e2) inside span(e1, e2, e3)
    tensor([1., 1.], dtype=torch.float64)
    >>> fastgauss.subspace_alignment(eye[:, :1], eye[:, 1:2])    # orthogonal lines
    tensor([0.], dtype=torch.float64)
    """
    a, b = (as_float(as_tensor(t, n)).double() for t, n in ((a, "a"), (b, "b")))
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a, b: expected bases [d, k] with one d, got {tuple(a.shape)} and {tuple(b.shape)}")
    same_device(("a", a), ("b", b))  # never moved
    cosines = torch.linalg.svdvals(_orthonormal(a).T @ _orthonormal(b))
    return cosines.clamp(max=1.0)
