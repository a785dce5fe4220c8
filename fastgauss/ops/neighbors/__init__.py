"""Exact nearest neighbours (fp32 candidates, float64 re-rank) and the memorization metrics built on them."""

from .op import gl_score, memorization_ratio, nearest_neighbors

__all__ = ["gl_score", "memorization_ratio", "nearest_neighbors"]
