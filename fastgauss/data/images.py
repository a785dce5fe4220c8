"""Folders and zip archives of image files (e.g. the layout of EDM's ``dataset_tool.py``)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ._common import kept_count, scale_to_unit, to_tensor

#: File extensions (lower case) treated as images in folders and zip archives.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

Opener = Callable[[], BinaryIO]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def load_folder(root: Path, limit: int | None) -> torch.Tensor:
    try:
        files = [p for p in root.rglob("*") if _is_image_name(p.name) and p.is_file()]
    except OSError as e:
        raise ValueError(f"cannot read folder '{root}': {e}") from e
    named = sorted((p.relative_to(root).as_posix(), p) for p in files)
    items = [(str(p), _file_opener(p)) for _, p in named]
    return _imagesto_tensor(items, limit, f"folder '{root}'")


def _file_opener(path: Path) -> Opener:
    return lambda: open(path, "rb")


def load_zip(path: Path, limit: int | None) -> torch.Tensor:
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
            return _imagesto_tensor(items, limit, f"zip '{path}'")
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"cannot read zip '{path}': {e}") from e


def _zip_opener(zf: zipfile.ZipFile, name: str) -> Opener:
    return lambda: io.BytesIO(zf.read(name))


def _imagesto_tensor(
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
    items = items[: kept_count(len(items), limit, what)]
    arrays = list(_decode_same_size(items))
    if any(a.ndim == 3 for a in arrays):  # mixed or all colour -> RGB
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
        stacked = np.stack(arrays).transpose(0, 3, 1, 2)  # [N, 3, H, W]
    else:
        stacked = np.stack(arrays)[:, None]  # [N, 1, H, W]
    return to_tensor(scale_to_unit(stacked, 0.0, 255.0))


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
