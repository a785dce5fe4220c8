"""The Gaussian denoiser (DESIGN.md section 1): the op ``gaussian_denoise`` and the module ``GaussianDenoiser``."""

from .module import GaussianDenoiser
from .op import PRECISIONS, gaussian_denoise

__all__ = ["PRECISIONS", "GaussianDenoiser", "gaussian_denoise"]
