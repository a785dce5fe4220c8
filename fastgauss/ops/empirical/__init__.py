"""The memorizing (empirical) denoiser: the op ``empirical_denoise`` and the module ``EmpiricalDenoiser``."""

from .op import PRECISIONS, EmpiricalDenoiser, empirical_denoise

__all__ = ["PRECISIONS", "EmpiricalDenoiser", "empirical_denoise"]
