"""``load_dataset``: from a bundled name or a path to the reader of its kind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .arrays import SCALES, load_array_file
from .bundled import BUNDLED, load_bundled
from .images import load_folder, load_zip


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
        return load_bundled(source, limit)

    path = Path(os.fsdecode(os.fspath(source)))
    if path.is_dir():
        _scale_only_for_arrays(scale, path)
        return load_folder(path, limit)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            _scale_only_for_arrays(scale, path)
            return load_zip(path, limit)
        if suffix in (".npy", ".npz"):
            return load_array_file(path, limit, scale)
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


def _check_limit(limit: int | None) -> None:
    """Validate the type and lower bound of ``limit`` (before any loading)."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
