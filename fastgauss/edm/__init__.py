"""EDM (Karras et al. 2022) training and sampling: the reference loop the paper's finding is shown with.

    precond   EDMDenoiser (c_skip / c_out / c_in / c_noise), edm_loss, EMA, training_sigmas
    unet      SmallUNet, the network the demo trains
    splits    deterministic training subsets and batches
    train     TrainConfig, Trainer, load_checkpoint
    sampling  edm_sigmas, sample_euler, sample_heun for any denoiser
    teleport  the Gaussian jump that replaces a sampler's first steps

Example:
    >>> from fastgauss.edm import EDMDenoiser
    >>> from fastgauss.edm.unet import SmallUNet
    >>> net = EDMDenoiser(SmallUNet(channels=1, width=8))
"""

from .precond import EMA, SIGMA_DATA, EDMDenoiser, edm_coefficients, edm_loss, training_sigmas

__all__ = ["EMA", "SIGMA_DATA", "EDMDenoiser", "edm_coefficients", "edm_loss", "training_sigmas"]
