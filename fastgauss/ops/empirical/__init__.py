"""The memorizing (empirical) denoiser: the op ``empirical_denoise`` and the module ``EmpiricalDenoiser``.

    op            empirical_denoise, its autograd Function (backward, jvp, vmap) and validation
    module        EmpiricalDenoiser (the denoiser protocol, jvp, last_precision)
    training_set  the rows, their centre and norms, cached on the tensor's version
    precision     which products the distances may use; the window re-scored exactly in float64
    stream        one pass over the rows (PyTorch chunks or the Triton kernels), merged exactly
    _torch        the PyTorch product path (partials and their Chan / log-sum-exp merges)
"""

from .module import EmpiricalDenoiser
from .op import PRECISIONS, empirical_denoise

__all__ = ["PRECISIONS", "EmpiricalDenoiser", "empirical_denoise"]
