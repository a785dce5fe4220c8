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

The package imports nothing else from ``fastgauss``. One module per kind of source:
:mod:`.bundled` (scikit-learn / scikit-image datasets), :mod:`.images` (folders and zips of
image files), :mod:`.arrays` (``.npy`` / ``.npz``); :mod:`.load` dispatches between them.
"""

from .arrays import RANGE_TOLERANCE, SCALES
from .bundled import BUNDLED
from .images import IMAGE_EXTENSIONS
from .load import dataset_names, load_dataset

__all__ = ["BUNDLED", "IMAGE_EXTENSIONS", "RANGE_TOLERANCE", "SCALES", "dataset_names", "load_dataset"]
