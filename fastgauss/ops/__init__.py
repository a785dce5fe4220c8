"""The ops: one folder per kernel family, each with its Triton kernels in ``fastgauss.kernels.<family>``.

    moments    Moments: streaming mean / covariance / cross-covariance (float64 state)
    gaussian   gaussian_denoise, GaussianDenoiser: the Gaussian denoiser in the covariance eigenbasis
    empirical  empirical_denoise, EmpiricalDenoiser: the memorizing (training-set) optimal denoiser
    neighbors  nearest_neighbors (exact, float64 re-rank), gl_score, memorization_ratio

In each family ``op.py`` validates, dispatches (``fastgauss._core.backend``) and holds the autograd
Function; ``_torch.py`` is the PyTorch product path.
"""
