"""Streaming mean, covariance and cross-covariance of a dataset, kept in float64."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ..._core import precision as precisions
from ..._core.arrays import as_float, as_tensor, check_finite, flatten_batch
from ..._core.device import require_device
from .products import PRODUCT_ROUNDING, ROUNDING_FACTOR, _CONSERVATIVE, _gram_accumulate, _upper_to_symmetric, _worst
from .state import restored, state_of


PRECISIONS = precisions.MOMENTS


class Moments:
    """Streaming first and second moments of vectors, merged exactly (Chan et al.).

    Each ``update(x)`` takes a batch x: [B, *feature_shape] (flattened to d features),
    centres it on its own mean, accumulates its Gram matrix with fp32 products (float64
    input: float64 products) and merges the result into float64 state: count n,
    mean [d] and the centred scatter sum M [d, d]. ``update(x, z)`` with paired
    z: [B, *feature_shape_z] also keeps mean_z [dz] and the cross scatter C_zx [dz, d].

    On CUDA tensors the Gram product is a Triton kernel that computes only the tiles on
    and above the diagonal; on CPU it is blocked BLAS. ``precision`` picks the kernel's
    fp32 product mode: "ieee" (exact fp32 products, default), "tf32x3" (about fp32
    accuracy on tensor cores) or "tf32" (about 1e-3 relative error per product); the
    PyTorch path uses exact products unless the process allows TF32/bf16 matmuls.

    ``product_precision`` records the least precise products any update was accumulated with
    ("float64", "float32", "tf32x3", "tf32" or "bf16"; None before the first update); it is
    saved by ``state_dict``, kept by ``merge``, and sets the rounding level below which
    ``eigh`` reports an eigenvalue as 0. A state saved before this record existed (version 1)
    is assumed to hold the worst its kernel mode could give ("ieee" -> "float32").

    Exact-rank rule of ``eigh``: the covariance of n rows centred on their mean has rank at
    most n - 1, so the eigenvalues past min(n - 1, d) are exactly 0; so are those below
    ``ROUNDING_FACTOR * u * lambda_max`` (u: the unit roundoff of ``product_precision``;
    at least d * eps64 * lambda_max, float64 eigh's own rounding).

    Example:
        >>> import torch, fastgauss
        >>> m = fastgauss.Moments()
        >>> for batch in torch.randn(1000, 3, 8, 8).split(128):
        ...     _ = m.update(batch)
        >>> m.count, m.mean.shape, m.covariance().shape
        (1000, torch.Size([192]), torch.Size([192, 192]))
    """

    def __init__(self, *, precision: str = "ieee"):
        precisions.check_precision(precision, PRECISIONS, "moments")
        self.precision = precision
        self.count = 0
        self.feature_shape: tuple[int, ...] | None = None
        self.cross_feature_shape: tuple[int, ...] | None = None
        self._mean: torch.Tensor | None = None
        self._scatter: torch.Tensor | None = None  # upper triangle holds M
        self._cross_mean: torch.Tensor | None = None
        self._cross_scatter: torch.Tensor | None = None
        self.product_precision: str | None = None

    # ----------------------------------------------------------------- properties
    @property
    def dim(self) -> int | None:
        """Number of features d, or None before the first update."""
        return None if self.feature_shape is None else math.prod(self.feature_shape)

    @property
    def cross_dim(self) -> int | None:
        return None if self.cross_feature_shape is None else math.prod(self.cross_feature_shape)

    @property
    def paired(self) -> bool | None:
        """True once updated with (x, z) pairs, False with x alone, None before any update."""
        if self.feature_shape is None:
            return None
        return self.cross_feature_shape is not None

    @property
    def device(self) -> torch.device | None:
        return None if self._mean is None else self._mean.device

    def to(self, device) -> Moments:
        """Moves the accumulated state to ``device`` (nothing else moves it); returns self."""
        for name in ("_mean", "_scatter", "_cross_mean", "_cross_scatter"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    @property
    def mean(self) -> torch.Tensor:
        """mu: [d] float64."""
        self._require_samples(1, "mean")
        return self._mean.clone()

    @property
    def cross_mean(self) -> torch.Tensor:
        """Mean of the paired z: [dz] float64."""
        self._require_paired("cross_mean")
        self._require_samples(1, "cross_mean")
        return self._cross_mean.clone()

    def scatter(self) -> torch.Tensor:
        """Centred scatter sum M = sum (x - mu)(x - mu)^T: [d, d] float64, symmetric."""
        self._require_samples(1, "scatter")
        return _upper_to_symmetric(self._scatter)

    def covariance(self, ddof: int = 0) -> torch.Tensor:
        """Sigma = M / (n - ddof): [d, d] float64, symmetric. ddof=0 divides by n."""
        self._require_samples(ddof + 1, f"covariance(ddof={ddof})")
        return self.scatter() / (self.count - ddof)

    def cross_covariance(self, ddof: int = 0) -> torch.Tensor:
        """C_zx = sum (z - mu_z)(x - mu_x)^T / (n - ddof): [dz, d] float64."""
        self._require_paired("cross_covariance")
        self._require_samples(ddof + 1, f"cross_covariance(ddof={ddof})")
        return self._cross_scatter / (self.count - ddof)

    def rounding_level(self) -> float:
        """Relative level (of lambda_max) below which an eigenvalue of the covariance is rounding.

        max(ROUNDING_FACTOR * u, d * eps64), u the unit roundoff of ``product_precision``.
        """
        self._require_samples(1, "rounding_level")
        # None with samples: the state came from ranks that did not say (all_reduce of empty ranks).
        recorded = self.product_precision or _CONSERVATIVE[self.precision]
        products = ROUNDING_FACTOR * PRODUCT_ROUNDING[recorded]
        return max(products, self.dim * PRODUCT_ROUNDING["float64"] * 2)

    def exact_rank(self) -> int:
        """Most nonzero eigenvalues the covariance can have: min(n - 1, d) for n rows (any ddof)."""
        self._require_samples(1, "exact_rank")
        return min(self.count - 1, self.dim)

    def eigh(self, rank: int | None = None, ddof: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenpairs of the covariance, largest first, with the exact-rank rule.

        Returns (eigvals [r], eigvecs [d, r]) in float64, r = rank or d. Eigenvalues past
        ``exact_rank()`` = min(n - 1, d) are exactly 0 (n rows centred on their mean span at
        most n - 1 directions), and so are those below ``rounding_level() * lambda_max``
        (what the accumulation's rounding puts in the null space). Their eigenvectors are
        still returned (an orthonormal basis of the null space).

        Example:
            >>> import torch, fastgauss
            >>> m = fastgauss.Moments().update(torch.randn(5, 8))  # 5 rows: rank <= 4
            >>> vals, vecs = m.eigh()
            >>> int((vals > 0).sum()), vecs.shape
            (4, torch.Size([8, 8]))
        """
        cov = self.covariance(ddof)
        d = cov.shape[0]
        if rank is not None and not (isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= d):
            raise ValueError(f"rank: expected an integer from 1 to d = {d}, got {rank!r}")
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        real = torch.arange(d, device=eigvals.device) < self.exact_rank()
        real &= eigvals > self.rounding_level() * eigvals[0].clamp_min(0)
        eigvals = torch.where(real, eigvals, torch.zeros((), dtype=eigvals.dtype, device=eigvals.device))
        r = d if rank is None else rank
        return eigvals[:r].contiguous(), eigvecs[:, :r].contiguous()

    # -------------------------------------------------------------------- updates
    def update(self, x, z=None) -> Moments:
        """Add a batch x: [B, *feature_shape] (and its paired z: [B, *feature_shape_z]).

        Any float dtype; integers and bools are converted; numpy and cupy arrays are taken
        through DLPack. An empty batch is a no-op. On bad input (wrong rank, a feature size
        that differs from earlier updates, non-finite values) raises ValueError and leaves
        the state exactly as it was.
        """
        x = as_float(as_tensor(x, "x"))
        x_flat = flatten_batch(x, "x")
        self._check_features("x", x.shape[1:], self.feature_shape)
        z_flat = None
        if z is not None:
            z = as_float(as_tensor(z, "z"))
            z_flat = flatten_batch(z, "z")
            self._check_features("z", z.shape[1:], self.cross_feature_shape)
            if z_flat.shape[0] != x_flat.shape[0]:
                raise ValueError(f"z: batch size {z_flat.shape[0]} differs from x's {x_flat.shape[0]}")
            require_device(z_flat, "z", x_flat.device, "x")
        if self.paired is not None and self.paired != (z is not None):
            raise ValueError("z: this Moments was updated " + ("with" if self.paired else "without")
                             + " paired z before; every update must do the same")
        if self.device is not None:
            require_device(x_flat, "x", self.device, "this Moments' state")
        if x_flat.shape[0] == 0:
            return self
        check_finite(x_flat, "x")
        if z_flat is not None:
            check_finite(z_flat, "z")
        if self.feature_shape is None:
            self._allocate(tuple(x.shape[1:]), None if z is None else tuple(z.shape[1:]), x_flat.device)
        self._accumulate(x_flat, z_flat)
        return self

    def _accumulate(self, x: torch.Tensor, z: torch.Tensor | None) -> None:
        n_a, n_b = self.count, x.shape[0]
        n = n_a + n_b
        # Chan: M = M_a + G - n_b e e^T + (n_a n_b / n) delta delta^T, where G is the Gram
        # of the chunk about its mean rounded to the compute dtype, and e that rounding.
        dtype = torch.float64 if torch.float64 in (x.dtype, getattr(z, "dtype", None)) else torch.float32
        x, z = x.to(dtype), (None if z is None else z.to(dtype))
        x_mean, x_shift, x_err = self._chunk_mean(x)
        x_delta = x_mean - self._mean
        coef = torch.tensor([-float(n_b), n_a * n_b / n], dtype=torch.float64, device=x.device)
        products = _gram_accumulate(self._scatter, x, x_shift, precision=self.precision)
        x_terms = torch.stack([x_err, x_delta])  # [2, d]
        self._scatter.addmm_(x_terms.T, coef[:, None] * x_terms)
        self._mean += x_delta * (n_b / n)
        if z is not None:
            z_mean, z_shift, z_err = self._chunk_mean(z)
            z_delta = z_mean - self._cross_mean
            products = _worst(products, _gram_accumulate(self._cross_scatter, z, z_shift, x, x_shift,
                                                         precision=self.precision))
            z_terms = torch.stack([z_err, z_delta])
            self._cross_scatter.addmm_(z_terms.T, coef[:, None] * x_terms)
            self._cross_mean += z_delta * (n_b / n)
        self.count = n
        self.product_precision = _worst(self.product_precision, products)

    @staticmethod
    def _chunk_mean(x: torch.Tensor):
        """(mean in float64, mean rounded to x's dtype, the rounding error in float64)."""
        mean = x.sum(0, dtype=torch.float64) / x.shape[0]
        shift = mean.to(x.dtype)
        return mean, shift, mean - shift.to(torch.float64)

    def merge(self, other: Moments) -> Moments:
        """Fold another accumulator's samples into this one (exact Chan merge); returns self."""
        if not isinstance(other, Moments):
            raise TypeError(f"other: expected Moments, got {type(other).__name__}")
        if other.count == 0:
            return self
        for name, mine, theirs in (("features", self.feature_shape, other.feature_shape),
                                   ("paired features", self.cross_feature_shape, other.cross_feature_shape)):
            if self.count and math.prod(mine or ()) != math.prod(theirs or ()):
                raise ValueError(f"other: {name} {theirs} do not match this accumulator's {mine}")
        if self.count and self.paired != other.paired:
            raise ValueError("other: one accumulator holds paired (x, z) moments and the other does not")
        if self.count == 0:
            self._allocate(other.feature_shape, other.cross_feature_shape, self.device or other.device)
        require_device(other._mean, "other", self.device, "this Moments' state")
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other._mean - self._mean
        self._scatter += other._scatter
        self._scatter.addr_(delta, delta, alpha=n_a * n_b / n)
        if self.paired:
            z_delta = other._cross_mean - self._cross_mean
            self._cross_scatter += other._cross_scatter
            self._cross_scatter.addr_(z_delta, delta, alpha=n_a * n_b / n)
            self._cross_mean += z_delta * (n_b / n)
        self._mean += delta * (n_b / n)
        self.count = n
        self.product_precision = _worst(self.product_precision, other.product_precision)
        return self

    def all_reduce(self, group=None) -> Moments:
        """Merge the accumulators of every rank of ``group`` (torch.distributed, any backend).

        Afterwards every rank holds the moments of all ranks' samples. Ranks that saw no
        data take part too. Returns self.
        """
        from ..._core.distributed import all_reduce_moments
        all_reduce_moments(self, group)
        return self

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """A copy of the state, for torch.save; load it with ``load_state_dict`` to resume."""
        return state_of(self)

    def load_state_dict(self, state: dict) -> Moments:
        """Restore a state written by ``state_dict`` (replacing the current one); returns self.

        A version-1 state (written before ``product_precision`` was recorded) loads with the
        worst product precision its kernel mode could have given."""
        self.__dict__.update(restored(state).__dict__)
        return self

    @classmethod
    def from_loader(cls, batches: Iterable, *, paired: bool = False, device=None, progress: bool = True,
                    total: int | None = None, desc: str = "moments", precision: str = "ieee") -> Moments:
        """Stream an iterable of batches (a DataLoader, a generator, a list of tensors).

        Each item is a batch x, or a tuple/list whose first element is x (labels are
        ignored) or, with ``paired=True``, whose first two elements are (x, z). ``device``
        moves each batch before accumulating (stream host data through a GPU). Shows a
        tqdm progress bar unless ``progress=False``.
        """
        from tqdm.auto import tqdm

        from ..._core.device import check_device

        if device is not None:
            device = check_device(device)  # before the progress bar: a clear error, not torch's deep one
        moments = cls(precision=precision)
        if total is None and hasattr(batches, "__len__"):
            total = len(batches)
        bar = tqdm(batches, total=total, desc=desc, unit="batch", disable=not progress)
        for item in bar:
            if isinstance(item, (tuple, list)):
                x, z = item[0], (item[1] if paired else None)
            else:
                if paired:
                    raise ValueError("batches: paired=True needs (x, z) tuples, got a single array")
                x, z = item, None
            if device is not None:
                x = as_tensor(x, "x").to(device, non_blocking=True)
                z = None if z is None else as_tensor(z, "z").to(device, non_blocking=True)
            moments.update(x, z)
            bar.set_postfix(samples=moments.count, refresh=False)
        return moments

    # ------------------------------------------------------------------- helpers
    def _allocate(self, feature_shape, cross_feature_shape, device) -> None:
        self.feature_shape = tuple(feature_shape)
        self.cross_feature_shape = None if cross_feature_shape is None else tuple(cross_feature_shape)
        d = self.dim
        f64 = dict(dtype=torch.float64, device=device)
        self._mean = torch.zeros(d, **f64)
        self._scatter = torch.zeros(d, d, **f64)
        if self.cross_feature_shape is not None:
            self._cross_mean = torch.zeros(self.cross_dim, **f64)
            self._cross_scatter = torch.zeros(self.cross_dim, d, **f64)

    @staticmethod
    def _check_features(name: str, shape: torch.Size, expected: tuple[int, ...] | None) -> None:
        if expected is not None and math.prod(shape) != math.prod(expected):
            raise ValueError(
                f"{name}: feature size {math.prod(shape)} (feature shape {tuple(shape)}) differs from "
                f"the {math.prod(expected)} features (feature shape {expected}) of earlier updates")

    def _require_samples(self, needed: int, what: str) -> None:
        if self.count < needed:
            raise ValueError(f"{what} needs at least {needed} sample(s), this Moments has {self.count}")

    def _require_paired(self, what: str) -> None:
        if not self.paired:
            raise ValueError(f"{what}: no paired z was accumulated (use update(x, z))")

    def __repr__(self) -> str:
        where = "" if self.device is None else f", device={self.device}"
        pairs = f", cross_dim={self.cross_dim}" if self.paired else ""
        return (f"Moments(count={self.count}, dim={self.dim}{pairs}{where}, precision={self.precision!r}, "
                f"product_precision={self.product_precision!r})")
