"""Every launch configuration of the Gaussian kernels (the gate builds each, the tuned ones and
the former ones gpu_check compares with) gives the reference result: choose_config picks
"large" only from 1024 rows, too big for the interpreter, so each config is forced here on odd,
small sizes that leave partial tiles in every dimension, with x - mu formed in the projection
and before it."""

import pytest
import torch

from fastgauss import reference as ref
from fastgauss.kernels import gaussian as kernel

TOLERANCE = {"ieee": 1e-5, "tf32": 5e-3, "bf16": 2e-2}


def _cases():
    for size, cfg, family in kernel._gate_configs():
        for precision in (("ieee",) if family == "fma" else ("tf32", "bf16")):
            for centre in (False, True):
                yield pytest.param(cfg, precision, centre, id=f"{family}-{size}-{precision}-centre{int(centre)}")


@pytest.mark.parametrize("cfg,precision,centre", list(_cases()))
def test_forced_config_matches_float64_reference(cfg, precision, centre, monkeypatch):
    monkeypatch.setattr(kernel, "choose_config", lambda *_: cfg)
    g = torch.Generator().manual_seed(cfg.block_m * 7 + cfg.block_n)
    b, d, r, levels = cfg.block_m + 3, cfg.block_n + 5, cfg.block_n + 1, 2
    u = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :r]
    lam = torch.logspace(1, -3, r, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    sigma = torch.rand(b, levels, generator=g, dtype=torch.float64) * 2 + 0.05
    lam_rest = 1e-2
    eigvecs = u.to(torch.bfloat16 if precision == "bf16" else torch.float32).contiguous()
    got = kernel.denoise(x.float(), mean.float(), eigvecs, lam.float(), sigma.float().contiguous(),
                         torch.tensor([lam_rest]), output="denoised", precision=precision, centre=centre)
    assert got.shape == (levels, b, d) and torch.isfinite(got).all()
    for t in range(levels):
        expected = ref.gaussian_denoiser(x, sigma[:, t], mean, lam, u, lam_rest)
        err = ((got[t].double() - expected).norm() / expected.norm()).item()
        assert err <= TOLERANCE[precision], (t, err)
