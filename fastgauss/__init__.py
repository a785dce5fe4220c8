"""fastgauss: fused kernels for the hidden Gaussian structure of diffusion models.

Public API (see README.md for a tour):
    Moments           streaming mean / covariance / cross-covariance in float64
    data.load_dataset bundled datasets (digits, faces, patches) and image folders, zips, arrays
"""

from .moments import Moments

__all__ = ["Moments"]
__version__ = "0.1.0"
