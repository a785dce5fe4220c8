"""Streaming moments (DESIGN.md section 1, "Moments"): ``Moments``, its precisions and rounding table.

    op        Moments: updates, Chan merges, all_reduce, covariance, eigh with the exact-rank rule
    products  the precision of the products an update used, and the Gram update that records it
    state     state_dict / load_state_dict, versioned and checked
    _torch    the PyTorch product path of the centred Gram
"""

from .op import PRECISIONS, Moments
from .products import PRODUCT_ROUNDING

__all__ = ["PRECISIONS", "PRODUCT_ROUNDING", "Moments"]
