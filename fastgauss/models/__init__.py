"""Model adapters: pretrained diffusion models as denoisers D(x; sigma) in the library's convention.

    from_diffusers(unet, scheduler)   diffusers UNet2DModel + any VP / EDM-style / score-VE scheduler
    from_edm(net)                     NVlabs EDM / EDM2 preconditioned networks (and fastgauss's own)
    from_score(model, kind, output)   score-SDE models (VE, continuous VP), data in [-1, 1] or [0, 1]
    load_denoiser(path)               any of these from disk (EDM pickles only with trust_code=True)

Every adapter is an nn.Module (an :class:`Adapter`) following the denoiser protocol, with
``sigma_min`` / ``sigma_max``, ``feature_shape``, ``label_dim``, ``class_labels``, ``latent`` and
``check_data(data)``. diffusers is needed only to load diffusers folders (``pip install
'fastgauss[diffusers]'``).
"""

from ._base import Adapter
from .diffusers import DiffusersDenoiser, from_diffusers
from .edm import EDMNetDenoiser, from_edm
from .load import load_denoiser
from .score import ScoreDenoiser, from_score

__all__ = ["Adapter", "DiffusersDenoiser", "EDMNetDenoiser", "ScoreDenoiser", "from_diffusers", "from_edm",
           "from_score", "load_denoiser"]
