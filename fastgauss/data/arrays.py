"""``.npy`` / ``.npz`` array files: layouts, dtypes and the ``scale=`` of float arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._common import kept_count, scale_to_unit, to_tensor

#: Source ranges a float array can be mapped from onto [-1, 1] (``scale=`` of :func:`load_dataset`).
SCALES: dict[str, tuple[float, float]] = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0)}
#: How far outside its range a float array may stray, as a fraction of the half-width of the range
#: (rounding of a conversion done elsewhere); such values are kept as they are.
RANGE_TOLERANCE = 1e-3

# Preferred array names inside an .npz archive, in order of preference.
_NPZ_KEYS: tuple[str, ...] = ("x", "images", "data")

_CHANNELS: frozenset[int] = frozenset({1, 3, 4})


def load_array_file(path: Path, limit: int | None, scale: str | None = None) -> torch.Tensor:
    arr = _read_array(path)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"array in '{path}' has shape {arr.shape}; expected [N, H, W], [N, C, H, W], "
            f"[N, H, W, C] or [N, d]"
        )
    n = kept_count(arr.shape[0], limit, f"'{path}'")
    if n == 0:
        raise ValueError(f"array in '{path}' holds no items (shape {arr.shape})")
    return to_tensor(_scale_array(_to_nchw(arr[:n], path), path, scale, check_range=arr.ndim > 2))


def _read_array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # OSError, ValueError (pickled / corrupt), BadZipFile, ...
        raise ValueError(f"cannot read array file '{path}': {e}") from e
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded as npz:
        names = list(npz.files)
        key = next((k for k in _NPZ_KEYS if k in names), None)
        if key is None and len(names) == 1:
            key = names[0]
        if key is None:
            raise ValueError(
                f"cannot choose an array in '{path}': no array named "
                f"{' / '.join(_NPZ_KEYS)} and {len(names)} arrays present "
                f"({', '.join(names) or 'none'})"
            )
        try:
            return npz[key]
        except Exception as e:
            raise ValueError(f"cannot read array '{key}' from '{path}': {e}") from e


def _scale_hint(lo: float, hi: float) -> str:
    """Which scale= (or --scale) maps a float range found in the data."""
    for name, (a, b) in SCALES.items():
        tol = RANGE_TOLERANCE * (b - a) / 2
        if lo >= a - tol and hi <= b + tol:
            return (f"if the data is in {a:g}..{b:g}, pass scale={name!r} to load_dataset "
                    f"(--scale {name} on the command line) to map it onto [-1, 1]")
    return ("no scale= fits it (0-1 or 0-255): map the data onto [-1, 1] before saving it "
            f"(e.g. 2 * (x - {lo:.4g}) / ({hi:.4g} - {lo:.4g}) - 1)")


def _to_nchw(arr: np.ndarray, path: Path) -> np.ndarray:
    """Bring a 2/3/4-D array to ``[N, d]`` or ``[N, C, H, W]`` (no scaling)."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        return arr[:, None]
    if arr.shape[-1] in _CHANNELS and arr.shape[1] not in _CHANNELS:
        return arr.transpose(0, 3, 1, 2)
    if arr.shape[1] in _CHANNELS:
        return arr
    raise ValueError(
        f"array in '{path}' has shape {arr.shape}: neither dim 1 nor the last dim is a "
        f"channel count in {{1, 3, 4}}"
    )


def _scale_array(arr: np.ndarray, path: Path, scale: str | None = None, *, check_range: bool = True) -> np.ndarray:
    """Scale by dtype: uint8 and bool to ``[-1, 1]``; floats must be finite and either in
    ``[-1, 1]`` (returned unchanged) or in the ``scale`` range (mapped from it). Flat [N, d]
    vectors (``check_range=False``) need not be pixels: without ``scale`` they pass unchanged."""
    if arr.dtype in (np.uint8, np.bool_):
        natural = "0-255" if arr.dtype == np.uint8 else "0-1"
        if scale is not None and scale != natural:
            raise ValueError(f"scale: {scale!r} does not fit the {arr.dtype} array in '{path}' (its range is "
                             f"{natural}, mapped to [-1, 1] without scale=)")
        return scale_to_unit(arr, *SCALES[natural])
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        bad = int(arr.size - np.count_nonzero(np.isfinite(out)))
        if bad:
            raise ValueError(
                f"array in '{path}' has {bad} non-finite values (NaN or +/-inf after "
                f"conversion to float32)"
            )
        lo, hi = (-1.0, 1.0) if scale is None else SCALES[scale]
        found_lo, found_hi = (float(out.min()), float(out.max())) if out.size else (lo, hi)
        tol = RANGE_TOLERANCE * (hi - lo) / 2
        if (check_range or scale is not None) and (found_lo < lo - tol or found_hi > hi + tol):
            given = "" if scale is None else f" (scale={scale!r})"
            raise ValueError(f"float array in '{path}' has values in [{found_lo:.4g}, {found_hi:.4g}], outside "
                             f"[{lo:g}, {hi:g}]{given}; {_scale_hint(found_lo, found_hi)}")
        if scale is None:
            return out
        return ((out.astype(np.float64) - lo) / ((hi - lo) / 2) - 1.0).astype(np.float32)
    raise ValueError(
        f"array in '{path}' has unsupported dtype {arr.dtype}; expected uint8, bool "
        f"or a float dtype"
    )
