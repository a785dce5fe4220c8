"""fastgauss: fused kernels for the hidden Gaussian structure of diffusion models.

Public API (see README.md for a tour):
    Moments            streaming mean / covariance / cross-covariance in float64
    GaussianDenoiser   optimal denoiser of N(mu, Sigma) as an nn.Module, with exact sampling
    gaussian_denoise   the fused Gaussian denoiser op (differentiable; CUDA kernel)
    empirical_denoise, EmpiricalDenoiser   the memorizing (training-set) optimal denoiser, streamed
    nearest_neighbors, gl_score, memorization_ratio   memorization metrics
    edm_sigmas, sample_euler, sample_heun   EDM schedule and samplers for any denoiser
    Trajectory         the path every sampler returns with return_trajectory=True
    jvp, linearity_score, denoiser_rmse, distill_linear, jacobian_spectrum, subspace_alignment
                       linearity and Jacobian diagnostics of any denoiser
    verdict, Verdict   the three-way verdict (memorizes / undertrained / generalizes) with its evidence
    from_diffusers, from_edm, from_score, load_denoiser   pretrained models (diffusers, EDM, score SDE) as denoisers
    analyze, Analysis  your own model against the Gaussian and memorizing denoisers of its data: report + verdict
    TrainConfig, Trainer   the reference EDM training loop (fastgauss.edm.train)
    data.load_dataset  bundled datasets (digits, faces, patches) and image folders, zips, arrays
"""

from .ops.empirical import EmpiricalDenoiser, empirical_denoise
from .ops.gaussian import GaussianDenoiser
from .ops.gaussian import gaussian_denoise
from .diagnostics.distill import distill_linear
from .diagnostics.jacobian import jacobian_spectrum, subspace_alignment
from .diagnostics.jvp import jvp
from .diagnostics.linearity import denoiser_rmse, linearity_score
from .ops.moments import Moments
from .ops.neighbors import gl_score, memorization_ratio, nearest_neighbors
from .edm.sampling import Trajectory, edm_sigmas, sample_euler, sample_heun
from .models import from_diffusers, from_edm, from_score, load_denoiser
from .diagnostics.verdict import Verdict, verdict
from .analysis import Analysis, analyze
from .edm.train import TrainConfig, Trainer

__all__ = ["from_diffusers", "from_edm", "from_score", "load_denoiser",
           "EmpiricalDenoiser", "GaussianDenoiser", "Moments", "denoiser_rmse", "distill_linear", "edm_sigmas",
           "empirical_denoise", "gaussian_denoise", "gl_score", "jacobian_spectrum", "jvp", "linearity_score",
           "memorization_ratio", "nearest_neighbors", "sample_euler", "sample_heun", "subspace_alignment",
           "Verdict", "verdict", "Analysis", "analyze", "TrainConfig", "Trainer"]
__all__ += ["Trajectory"]
__version__ = "0.1.0"
