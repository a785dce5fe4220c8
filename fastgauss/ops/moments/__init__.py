"""Streaming moments (DESIGN.md section 1, "Moments"): ``Moments``, its precisions and rounding table."""

from .op import PRECISIONS, PRODUCT_ROUNDING, Moments

__all__ = ["PRECISIONS", "PRODUCT_ROUNDING", "Moments"]
