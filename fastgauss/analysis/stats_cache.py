"""A cache of a dataset's statistics (the ``fastgauss stats`` record), keyed by what they depend on.

The key hashes the data's identity (the SHA-256 of its bytes, or for a file or folder its
resolved path, sizes and modification times), ``ddof``, the product ``precision`` and the
format version. A cached file is used only when it passes every check: readable without
executing code (``torch.load(weights_only=True)``), the same format, version and full key,
shapes and count that fit the data, finite values, and a stored mean equal to the data's
mean (recomputed in one cheap pass). Anything else is recomputed and written over it:
a stale or foreign cache is never trusted.

Example:
    >>> import tempfile, torch
    >>> from fastgauss.analysis.stats_cache import cached_stats
    >>> data = torch.randn(50, 1, 3, 3)
    >>> folder = tempfile.mkdtemp()
    >>> cached_stats(data, cache_dir=folder, progress=False).status
    'miss'
    >>> cached_stats(data, cache_dir=folder, progress=False).status
    'hit'
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .._core.precision import check_precision
from ..ops.moments.op import PRECISIONS, Moments

FORMAT = "fastgauss-stats-cache"
VERSION = 1


@dataclass
class CachedStats:
    """The statistics of one dataset: moments, eigenpairs (largest first, float64, CPU) and
    how they were obtained (``status``: "hit", "miss", "recomputed: REASON" or "uncached")."""

    record: dict
    moments: Moments
    status: str
    path: Path | None

    @property
    def mean(self) -> torch.Tensor:  # [d] float64
        return self.record["mean"]

    @property
    def eigvals(self) -> torch.Tensor:  # [d] float64, descending
        return self.record["eigvals"]

    @property
    def eigvecs(self) -> torch.Tensor:  # [d, d] float64, columns
        return self.record["eigvecs"]


def _fingerprint(data: torch.Tensor) -> list[str]:
    """Sum and sum of squares in float64 (one cheap pass): tells apart two readings of one file
    (e.g. another ``scale=``) that its path, size and modification time cannot."""
    flat = data.reshape(data.shape[0], -1)
    total = sq = 0.0
    for part in flat.split(4096):
        part = part.double()
        total, sq = total + float(part.sum()), sq + float((part * part).sum())
    return [repr(total), repr(sq)]


def data_identity(data: torch.Tensor, source=None) -> dict:
    """What the statistics of ``data`` depend on, as a JSON-able dict.

    source: the file or folder ``data`` was read from (then its resolved path and, for every
    file, size and modification time, with the data's shape, sum and sum of squares), else None
    (then the SHA-256 of the data's bytes).
    """
    if source is not None and not isinstance(source, torch.Tensor):
        path = Path(os.fspath(source))
        if path.is_file():
            st = path.stat()
            return {"kind": "file", "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                    "shape": list(data.shape), "sums": _fingerprint(data)}
        if path.is_dir():
            listing = hashlib.sha256()
            files = size = 0
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                st = child.stat()
                files, size = files + 1, size + st.st_size
                listing.update(f"{child.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            return {"kind": "folder", "path": str(path.resolve()), "files": files, "size": size,
                    "listing": listing.hexdigest(), "shape": list(data.shape), "sums": _fingerprint(data)}
    flat = data.detach().to("cpu").contiguous()
    digest = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return {"kind": "bytes", "sha256": digest.hexdigest(), "dtype": str(flat.dtype), "shape": list(flat.shape)}


def cache_key(identity: dict, ddof: int, precision: str) -> str:
    """The hex SHA-256 of (format, version, ddof, precision, data identity)."""
    text = json.dumps({"format": FORMAT, "version": VERSION, "ddof": ddof, "precision": precision,
                       "data": identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def stats_record(moments: Moments, *, ddof: int = 0, source: str = "") -> dict:
    """The ``fastgauss stats`` record of streamed moments: source, count, feature_shape, ddof,
    mean [d], covariance [d, d], eigvals [d] (descending), eigvecs [d, d] and the moments' state."""
    eigvals, eigvecs = moments.eigh(ddof=ddof)
    return {"source": source, "count": moments.count, "feature_shape": tuple(moments.feature_shape), "ddof": ddof,
            "mean": moments.mean.cpu(), "covariance": moments.covariance(ddof).cpu(), "eigvals": eigvals.cpu(),
            "eigvecs": eigvecs.cpu(), "moments": moments.state_dict()}


def _check_args(ddof, precision, batch_size) -> None:
    if ddof not in (0, 1):
        raise ValueError(f"ddof: expected 0 or 1, got {ddof!r}")
    check_precision(precision, PRECISIONS, "moments")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")


def _compute(data, *, ddof, precision, device, batch_size, progress, source) -> tuple[dict, Moments]:
    moments = Moments.from_loader(data.split(batch_size), device=device, progress=progress,
                                  desc="data statistics", precision=precision)
    return stats_record(moments, ddof=ddof, source=source), moments


def _data_mean(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    total = torch.zeros(math.prod(data.shape[1:]), dtype=torch.float64)
    for part in data.split(batch_size):
        total += part.reshape(part.shape[0], -1).to("cpu", torch.float64).sum(0)
    return total / data.shape[0]


def _validate(state, *, key: str, data: torch.Tensor, ddof: int, precision: str, batch_size: int) -> str | None:
    """None when ``state`` is a trustworthy record for ``data``, else the reason it is not."""
    if not isinstance(state, dict) or not isinstance(state.get("cache"), dict):
        return "not a fastgauss statistics cache"
    meta = state["cache"]
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return f"format {meta.get('format')!r} version {meta.get('version')!r}"
    if meta.get("key") != key:
        return "its key belongs to other data or settings"
    if state.get("ddof") != ddof or meta.get("precision") != precision:
        return "other ddof or precision"
    n, shape, d = data.shape[0], tuple(data.shape[1:]), math.prod(data.shape[1:])
    if state.get("count") != n or tuple(state.get("feature_shape") or ()) != shape:
        return f"count/shape {state.get('count')}/{state.get('feature_shape')} differ from the data's {n}/{shape}"
    want = {"mean": (d,), "covariance": (d, d), "eigvals": (d,), "eigvecs": (d, d)}
    for name, expected in want.items():
        value = state.get(name)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected or not torch.isfinite(value).all():
            return f"{name} is missing, misshapen or not finite"
    if not (state["eigvals"][:-1] >= state["eigvals"][1:]).all() or (state["eigvals"] < 0).any():
        return "eigenvalues are not descending and >= 0"
    mean = _data_mean(data, batch_size)
    if (state["mean"].double() - mean).abs().max() > 1e-9 * (1 + mean.abs().max()):
        return "its mean differs from the data's"
    return None


def cached_stats(data: torch.Tensor, *, cache_dir=None, source=None, ddof: int = 0, precision: str = "ieee",
                 device=None, batch_size: int = 1024, progress: bool = True) -> CachedStats:
    """The statistics of ``data`` ([N, *feature_shape]), from ``cache_dir`` when a valid record is there.

    source: the file or folder ``data`` came from (its path, sizes and modification times key
    the cache instead of a hash of the bytes). cache_dir=None computes without caching.
    The moments stream through ``device`` (default: data's device) in ``batch_size`` rows.
    A new record is written atomically (temporary file, then rename).
    """
    _check_args(ddof, precision, batch_size)
    if data.dim() < 2 or data.shape[0] < 1:
        raise ValueError(f"data: expected a non-empty [N, *feature_shape], got shape {tuple(data.shape)}")
    label = str(source) if source is not None else "tensor"
    if cache_dir is None:
        record, moments = _compute(data, ddof=ddof, precision=precision, device=device, batch_size=batch_size,
                                   progress=progress, source=label)
        return CachedStats(record, moments, "uncached", None)
    key = cache_key(data_identity(data, source), ddof, precision)
    path = Path(cache_dir) / f"stats-{key[:24]}.pt"
    status = "miss"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, foreign or code-carrying pickles all land here
            state, reason = None, f"unreadable ({type(exc).__name__})"
        else:
            reason = _validate(state, key=key, data=data, ddof=ddof, precision=precision, batch_size=batch_size)
        if reason is None:
            try:
                moments = Moments(precision=precision).load_state_dict(state["moments"])
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                reason = f"moments state unusable ({exc})"
            else:
                if moments.count == data.shape[0]:
                    return CachedStats(state, moments, "hit", path)
                reason = "moments state counts other data"
        status = f"recomputed: {reason}"
    record, moments = _compute(data, ddof=ddof, precision=precision, device=device, batch_size=batch_size,
                               progress=progress, source=label)
    record["cache"] = {"format": FORMAT, "version": VERSION, "key": key, "precision": precision}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(record, tmp)
    os.replace(tmp, path)
    return CachedStats(record, moments, status, path)
