"""Bundled datasets: they ship with scikit-learn and scikit-image and need no network."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ._common import kept_count, scale_to_unit, to_tensor

#: Bundled datasets: name -> one-line description.
BUNDLED: dict[str, str] = {
    "digits": "scikit-learn handwritten digits: 1797 grayscale 8x8 images, [1797, 1, 8, 8]",
    "faces": "scikit-image LFW subset: 200 grayscale 25x25 face crops, [200, 1, 25, 25]",
    "patches": (
        "non-overlapping 16x16 grayscale patches cut on a stride-16 grid from "
        "scikit-image's bundled photographs, [P, 1, 16, 16]"
    ),
}

# scikit-image images used by the "patches" dataset, in this fixed order.
_PATCH_IMAGES: tuple[str, ...] = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page",
    "grass", "gravel", "brick", "clock", "hubble_deep_field", "immunohistochemistry",
)
_PATCH_SIZE = 16


def load_bundled(name: str, limit: int | None) -> torch.Tensor:
    images, lo, hi = _BUNDLED_LOADERS[name]()  # [N, H, W] in [lo, hi]
    n = kept_count(len(images), limit, f"bundled dataset '{name}'")
    return to_tensor(scale_to_unit(images[:n], lo, hi)[:, None])


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
