"""Library calls with bad input: a ValueError naming what the caller passed (issue 12, section 2)."""

import pytest
import torch

import fastgauss


def _data(n=300, shape=(1, 4, 4), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_memorization_ratio_with_one_training_point_names_data_not_k():
    data = _data()
    with pytest.raises(ValueError, match=r"data: .*at least 2.*N = 1") as info:
        fastgauss.memorization_ratio(data[:3], data[:1])
    assert "k:" not in str(info.value)


def test_jacobian_spectrum_one_channel_image_as_in_the_readme():
    data = _data()
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
    gen = torch.Generator().manual_seed(0)
    u, s, _ = fastgauss.jacobian_spectrum(g, data[0], 0.5, k=3, generator=gen)
    w = g.weights(0.5)[:3].double()  # J = U diag(w) U^T: singular values w
    assert torch.allclose(s, w, rtol=1e-4) and u.shape == (16, 3)
    # and a network that does not declare feature_shape, on a 1-channel image [1, H, W]
    from fastgauss.edm import EDMDenoiser
    from fastgauss.edm.unet import SmallUNet

    net = EDMDenoiser(SmallUNet(channels=1, width=8)).eval()
    u, s, _ = fastgauss.jacobian_spectrum(net, data[0], 0.5, k=2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2,) and u.shape == (16, 2)


def test_jacobian_spectrum_batch_names_the_shape_passed():
    data = _data()
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
    with pytest.raises(ValueError, match=r"x: .*batch of 2 \(shape \(2, 1, 4, 4\)\)"):
        fastgauss.jacobian_spectrum(g, data[:2], 0.5, k=2)
    with pytest.raises(ValueError, match=r"x: .*got shape \(16,\)"):
        fastgauss.jacobian_spectrum(g, data[0].reshape(-1), 0.5, k=2)
    from fastgauss.edm import EDMDenoiser
    from fastgauss.edm.unet import SmallUNet

    net = EDMDenoiser(SmallUNet(channels=1, width=8)).eval()
    with pytest.raises(ValueError, match=r"x: the denoiser failed on x\[None\] of shape \(1, 2, 1, 4, 4\)"):
        fastgauss.jacobian_spectrum(net, data[:2], 0.5, k=2)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_linear_distillation_rejects_sigma_that_is_not_positive(sigma):
    data = _data()
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
    fit = fastgauss.distill_linear(g, data, [0.5, 2.0], generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"sigma: expected finite noise levels > 0, got .*grid: 0.5, 2"):
        fit(data[:2], sigma)
    with pytest.raises(ValueError, match="sigma"):
        fit(data[:2], torch.tensor([0.5, sigma]))
    assert torch.isfinite(fit(data[:2], 0.7)).all()


@pytest.mark.parametrize("make", [lambda u: 2 * u, lambda u: torch.cat([u[:, :2], u[:, :1]], 1),
                                  lambda u: u + 0.01 * torch.ones_like(u)])
def test_non_orthonormal_eigenvectors_are_rejected(make):
    u = torch.linalg.qr(torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    bad = make(u).float()
    with pytest.raises(ValueError, match="eigvecs: columns are not orthonormal"):
        fastgauss.GaussianDenoiser(torch.zeros(16), torch.ones(3), bad)
    with pytest.raises(ValueError, match="eigvecs: columns are not orthonormal"):
        fastgauss.gaussian_denoise(torch.zeros(2, 16), 0.5, torch.zeros(16), torch.ones(3), bad)
    fastgauss.GaussianDenoiser(torch.zeros(16), torch.ones(3), u.float())  # fp32 rounding of orthonormal: fine
    fastgauss.GaussianDenoiser(torch.zeros(16), torch.ones(3), u.to(torch.bfloat16), eigvec_dtype=torch.bfloat16)
