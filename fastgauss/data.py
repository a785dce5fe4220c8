"""Image datasets for diffusion experiments.

Every loader returns a ``float32`` :class:`torch.Tensor` of shape ``[N, C, H, W]``
whose pixels are mapped linearly from the source's natural range ``[lo, hi]``
onto ``[-1, 1]``:

* ``uint8`` (0 .. 255): ``x / 127.5 - 1``
* ``bool`` (0 .. 1): ``2 * x - 1``
* scikit-learn digits (0 .. 16): ``x / 8 - 1``
* scikit-image float images (0 .. 1): ``2 * x - 1``
* float arrays from ``.npy`` / ``.npz``: returned unchanged (cast to ``float32``),
  checked to be finite and, for images, in ``[-1, 1]`` (within ``RANGE_TOLERANCE``); with
  ``scale="0-1"`` or ``scale="0-255"`` mapped from that range instead

Sources
-------
A *source* is either the name of a bundled dataset (see :data:`BUNDLED`; these
ship with scikit-learn / scikit-image and need no network) or a path to

* a folder of image files (searched recursively),
* a ``.zip`` of image files (e.g. the layout written by EDM's ``dataset_tool.py``),
* a ``.npy`` / ``.npz`` array file.

Example
-------
>>> from fastgauss.data import load_dataset, dataset_names
>>> dataset_names()
['digits', 'faces', 'patches']
>>> x = load_dataset("digits", limit=64)
>>> x.shape, x.dtype
(torch.Size([64, 1, 8, 8]), torch.float32)
>>> bool(x.min() >= -1 and x.max() <= 1)
True

This module deliberately imports nothing else from ``fastgauss``.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["BUNDLED", "IMAGE_EXTENSIONS", "SCALES", "dataset_names", "load_dataset"]

#: Source ranges a float array can be mapped from onto [-1, 1] (``scale=`` of :func:`load_dataset`).
SCALES: dict[str, tuple[float, float]] = {"0-1": (0.0, 1.0), "0-255": (0.0, 255.0)}
#: How far outside its range a float array may stray, as a fraction of the half-width of the range
#: (rounding of a conversion done elsewhere); such values are kept as they are.
RANGE_TOLERANCE = 1e-3

#: Bundled datasets: name -> one-line description.
BUNDLED: dict[str, str] = {
    "digits": "scikit-learn handwritten digits: 1797 grayscale 8x8 images, [1797, 1, 8, 8]",
    "faces": "scikit-image LFW subset: 200 grayscale 25x25 face crops, [200, 1, 25, 25]",
    "patches": (
        "non-overlapping 16x16 grayscale patches cut on a stride-16 grid from "
        "scikit-image's bundled photographs, [P, 1, 16, 16]"
    ),
}

#: File extensions (lower case) treated as images in folders and zip archives.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

# scikit-image images used by the "patches" dataset, in this fixed order.
_PATCH_IMAGES: tuple[str, ...] = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page",
    "grass", "gravel", "brick", "clock", "hubble_deep_field", "immunohistochemistry",
)
_PATCH_SIZE = 16

# Preferred array names inside an .npz archive, in order of preference.
_NPZ_KEYS: tuple[str, ...] = ("x", "images", "data")

_CHANNELS: frozenset[int] = frozenset({1, 3, 4})

Opener = Callable[[], BinaryIO]


# --------------------------------------------------------------------------- API


def dataset_names() -> list[str]:
    """Names of the bundled datasets, e.g. ``['digits', 'faces', 'patches']``."""
    return list(BUNDLED)


def load_dataset(source: str | os.PathLike, *, limit: int | None = None, scale: str | None = None) -> torch.Tensor:
    """Load a dataset as a ``float32`` tensor scaled to ``[-1, 1]``.

    Parameters
    ----------
    source:
        A bundled name (a ``str`` equal to one of :func:`dataset_names`; bundled
        names win over a same-named file in the working directory, use
        ``"./digits"`` for that) or a path to a folder, ``.zip``, ``.npy`` or
        ``.npz`` file.

        * ``"digits"`` -- ``[1797, 1, 8, 8]``, from
          :func:`sklearn.datasets.load_digits` (range 0..16).
        * ``"faces"`` -- ``[200, 1, 25, 25]``, from :func:`skimage.data.lfw_subset`
          (range 0..1).
        * ``"patches"`` -- ``[P, 1, 16, 16]``: the photographs in ``_PATCH_IMAGES``
          converted to grayscale and cut into non-overlapping 16x16 patches on a
          stride-16 grid (row-major, image by image; partial patches at the
          right/bottom edges are dropped).
        * folder -- every file with an image extension (:data:`IMAGE_EXTENSIONS`,
          case-insensitive), found recursively and sorted by relative path
          (POSIX separators). Images of mode ``'L'`` or ``'1'`` give 1 channel,
          all other modes are converted to ``'RGB'`` (alpha is dropped); if the
          folder mixes grayscale and colour, grayscale images are replicated to
          RGB. All images must have the same size. Result ``[N, 1|3, H, W]``.
        * ``.zip`` -- same rules as a folder, applied to the archive's members
          (read in memory, never extracted). Non-image members such as
          ``dataset.json`` and macOS ``__MACOSX/`` metadata are ignored.
        * ``.npy`` / ``.npz`` -- for ``.npz`` the array named ``x``, ``images`` or
          ``data`` (first present), else the only array. Layouts:
          ``[N, H, W]`` -> ``[N, 1, H, W]``; ``[N, C, H, W]`` with ``C`` in
          {1, 3, 4}; ``[N, H, W, C]`` with ``C`` in {1, 3, 4} (detected when the
          last dim is in {1, 3, 4} and dim 1 is not) -> ``[N, C, H, W]``;
          ``[N, d]`` flat vectors stay a 2-D ``[N, d]`` tensor. ``uint8`` is
          scaled by ``x / 127.5 - 1``, ``bool`` by ``2 * x - 1``; float arrays are
          returned unchanged (cast to ``float32``) and must be finite and, for
          images, within ``[-1, 1]`` (give ``scale`` otherwise; flat ``[N, d]``
          vectors need not be pixels and are not range-checked without ``scale``);
          other dtypes are rejected.
    limit:
        Keep only the first ``limit`` items (in the deterministic order above).
        Must be ``>= 1`` and at most the number of items in the source. For
        folders and zips only the kept images are decoded, so the size and
        channel checks apply to those images only.
    scale:
        For float ``.npy`` / ``.npz`` arrays only: the range the values are in,
        ``"0-1"`` (mapped by ``2 * x - 1``) or ``"0-255"`` (``x / 127.5 - 1``);
        values outside it (beyond ``RANGE_TOLERANCE``) are an error. ``None``
        (default): the values must already be in ``[-1, 1]``.

    Returns
    -------
    torch.Tensor
        ``float32``, shape ``[N, C, H, W]`` (``[N, d]`` for flat vector arrays).

    Raises
    ------
    ValueError
        Unknown name / missing path, unsupported or unreadable file, empty folder
        or zip, undecodable image, mismatched image sizes, unsupported array
        layout or dtype, non-finite floats, or a bad ``limit``.

    Example
    -------
    >>> x = load_dataset("faces", limit=10)
    >>> tuple(x.shape)
    (10, 1, 25, 25)
    """
    _check_limit(limit)
    if scale is not None and scale not in SCALES:
        raise ValueError(f"scale: expected None or one of {', '.join(repr(k) for k in SCALES)}, got {scale!r}")
    if isinstance(source, str) and source in BUNDLED:
        _scale_only_for_arrays(scale, source)
        return _load_bundled(source, limit)

    path = Path(os.fsdecode(os.fspath(source)))
    if path.is_dir():
        _scale_only_for_arrays(scale, path)
        return _load_folder(path, limit)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            _scale_only_for_arrays(scale, path)
            return _load_zip(path, limit)
        if suffix in (".npy", ".npz"):
            return _load_array_file(path, limit, scale)
        raise ValueError(
            f"unsupported dataset file '{path}': expected a folder, .zip, .npy or .npz"
        )
    if path.exists():
        raise ValueError(f"unsupported dataset path '{path}': not a regular file or folder")
    raise ValueError(
        f"unknown dataset '{source}': not a file or folder, and not one of the "
        f"bundled datasets: {', '.join(dataset_names())}"
    )


def _scale_only_for_arrays(scale: str | None, source) -> None:
    if scale is not None:
        raise ValueError(f"scale: {scale!r} applies to float .npy/.npz arrays only; '{source}' has a known "
                         "pixel range and is scaled to [-1, 1] already")


# ------------------------------------------------------------------ limit handling


def _check_limit(limit: int | None) -> None:
    """Validate the type and lower bound of ``limit`` (before any loading)."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def _kept_count(available: int, limit: int | None, what: str) -> int:
    """Number of items to keep out of ``available``; error if ``limit`` is too big."""
    if limit is None:
        return available
    if limit > available:
        raise ValueError(f"limit={limit} is larger than the {available} items in {what}")
    return int(limit)


# ------------------------------------------------------------------------- scaling


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto ``[-1, 1]``; returns ``float32``.

    Computed in float64 then cast, so ``uint8`` input gives exactly
    ``(x / 127.5 - 1).astype(float32)``.
    """
    half = (hi - lo) / 2.0
    out = (arr.astype(np.float64) - lo) / half - 1.0
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


# ------------------------------------------------------------------------ bundled


def _load_bundled(name: str, limit: int | None) -> torch.Tensor:
    images, lo, hi = _BUNDLED_LOADERS[name]()  # [N, H, W] in [lo, hi]
    n = _kept_count(len(images), limit, f"bundled dataset '{name}'")
    return _to_tensor(_scale(images[:n], lo, hi)[:, None])


def _digits() -> tuple[np.ndarray, float, float]:
    from sklearn.datasets import load_digits

    return load_digits().images, 0.0, 16.0


def _faces() -> tuple[np.ndarray, float, float]:
    from skimage.data import lfw_subset

    return lfw_subset(), 0.0, 1.0


def _patches() -> tuple[np.ndarray, float, float]:
    import skimage.data

    grays = (_grayscale_unit(getattr(skimage.data, name)()) for name in _PATCH_IMAGES)
    return np.concatenate([_grid_patches(g, _PATCH_SIZE) for g in grays]), 0.0, 1.0


def _grayscale_unit(img: np.ndarray) -> np.ndarray:
    """Grayscale ``float64`` image in ``[0, 1]`` from a uint8/float, gray/RGB(A) image."""
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    if img.ndim == 3 and img.shape[-1] == 4:
        img = rgba2rgb(img)
    gray = rgb2gray(img) if img.ndim == 3 else img_as_float(img)
    return np.clip(gray, 0.0, 1.0)


def _grid_patches(img: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size x size`` patches of a 2-D image, row-major: ``[P, size, size]``."""
    rows, cols = img.shape[0] // size, img.shape[1] // size
    crop = img[: rows * size, : cols * size]
    return crop.reshape(rows, size, cols, size).swapaxes(1, 2).reshape(-1, size, size)


_BUNDLED_LOADERS: dict[str, Callable[[], tuple[np.ndarray, float, float]]] = {
    "digits": _digits,
    "faces": _faces,
    "patches": _patches,
}


# ---------------------------------------------------------------- folders and zips


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _load_folder(root: Path, limit: int | None) -> torch.Tensor:
    try:
        files = [p for p in root.rglob("*") if _is_image_name(p.name) and p.is_file()]
    except OSError as e:
        raise ValueError(f"cannot read folder '{root}': {e}") from e
    named = sorted((p.relative_to(root).as_posix(), p) for p in files)
    items = [(str(p), _file_opener(p)) for _, p in named]
    return _images_to_tensor(items, limit, f"folder '{root}'")


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb")


def _load_zip(path: Path, limit: int | None) -> torch.Tensor:
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(
                info.filename
                for info in zf.infolist()
                if not info.is_dir()
                and _is_image_name(info.filename)
                and not info.filename.startswith("__MACOSX/")
            )
            items = [(f"{path}:{name}", _zip_opener(zf, name)) for name in names]
            return _images_to_tensor(items, limit, f"zip '{path}'")
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"cannot read zip '{path}': {e}") from e


def _zip_opener(zf: zipfile.ZipFile, name: str) -> Opener:
    return lambda: io.BytesIO(zf.read(name))


def _images_to_tensor(
    items: Sequence[tuple[str, Opener]], limit: int | None, what: str
) -> torch.Tensor:
    """Decode ``(name, opener)`` pairs into a ``[N, C, H, W]`` tensor in ``[-1, 1]``.

    Shared by the folder and zip readers. ``opener()`` returns a binary file
    object; ``name`` is used in error messages.
    """
    if not items:
        raise ValueError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {what}"
        )
    items = items[: _kept_count(len(items), limit, what)]
    arrays = list(_decode_same_size(items))
    if any(a.ndim == 3 for a in arrays):  # mixed or all colour -> RGB
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
        stacked = np.stack(arrays).transpose(0, 3, 1, 2)  # [N, 3, H, W]
    else:
        stacked = np.stack(arrays)[:, None]  # [N, 1, H, W]
    return _to_tensor(_scale(stacked, 0.0, 255.0))


def _decode_same_size(items: Iterable[tuple[str, Opener]]) -> Iterable[np.ndarray]:
    """Yield uint8 arrays (``[H, W]`` or ``[H, W, 3]``), checking that sizes match."""
    first_name, first_size = None, None
    for name, opener in items:
        arr = _decode_image(name, opener)
        size = f"{arr.shape[1]}x{arr.shape[0]}"
        if first_size is None:
            first_name, first_size = name, size
        elif size != first_size:
            raise ValueError(
                f"image '{name}' has size {size} (WxH) but '{first_name}' has size "
                f"{first_size}; all images must have the same size"
            )
        yield arr


def _decode_image(name: str, opener: Opener) -> np.ndarray:
    """Read one image as uint8: ``[H, W]`` for modes 'L'/'1', else RGB ``[H, W, 3]``."""
    try:
        with opener() as fh, Image.open(fh) as im:
            mode = "L" if im.mode in ("L", "1") else "RGB"
            return np.asarray(im.convert(mode), dtype=np.uint8)
    except Exception as e:  # PIL raises many exception types for bad files
        raise ValueError(f"cannot read image '{name}': {e}") from e


# ----------------------------------------------------------------- .npy and .npz


def _load_array_file(path: Path, limit: int | None, scale: str | None = None) -> torch.Tensor:
    arr = _read_array(path)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"array in '{path}' has shape {arr.shape}; expected [N, H, W], [N, C, H, W], "
            f"[N, H, W, C] or [N, d]"
        )
    n = _kept_count(arr.shape[0], limit, f"'{path}'")
    if n == 0:
        raise ValueError(f"array in '{path}' holds no items (shape {arr.shape})")
    return _to_tensor(_scale_array(_to_nchw(arr[:n], path), path, scale, check_range=arr.ndim > 2))


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
        return _scale(arr, *SCALES[natural])
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
