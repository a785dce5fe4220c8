"""EDM preconditioning, loss and EMA, and the small UNet."""

import math

import pytest
import torch

from fastgauss.edm import EMA, EDMDenoiser, edm_coefficients, edm_loss, training_sigmas
from fastgauss.edm.unet import SmallUNet


def test_coefficients_follow_the_formulas():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i].item() == pytest.approx(0.25 / (s**2 + 0.25), rel=1e-14)
        assert c_out[i].item() == pytest.approx(s * 0.5 / math.sqrt(s**2 + 0.25), rel=1e-14)
        assert c_in[i].item() == pytest.approx(1 / math.sqrt(s**2 + 0.25), rel=1e-14)
        assert c_noise[i].item() == pytest.approx(math.log(s) / 4, rel=1e-14)


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 1, 25, 25), (2, 3, 16, 16), (1, 3, 7, 9)])
def test_unet_keeps_the_shape_and_starts_as_the_skip(shape):
    net = SmallUNet(channels=shape[1], width=16)
    den = EDMDenoiser(net)
    x = torch.randn(shape)
    for sigma in (0.7, torch.tensor(0.7), torch.full((shape[0],), 0.7)):
        out = den(x, sigma)
        assert out.shape == x.shape
        assert torch.allclose(out, x * 0.25 / (0.49 + 0.25))  # F = 0 at initialisation


def test_bad_input():
    with pytest.raises(ValueError, match="width"):
        SmallUNet(width=12)
    with pytest.raises(ValueError, match="sigma"):
        EDMDenoiser(SmallUNet(width=8))(torch.randn(3, 1, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match="decay"):
        EMA(SmallUNet(width=8), decay=1.0)


def test_loss_matches_its_formula():
    den = EDMDenoiser(SmallUNet(width=8))  # F = 0: D = c_skip x
    y = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    den = den.double()
    loss = edm_loss(den, y, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    sigma = training_sigmas(4, generator=g, dtype=torch.float64)
    noise = torch.randn(y.shape, generator=g, dtype=torch.float64)
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    weight = ((sigma**2 + 0.25) / (sigma * 0.5) ** 2).reshape(-1, 1, 1, 1)
    expected = (weight * (c_skip * (y + sigma.reshape(-1, 1, 1, 1) * noise) - y) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_training_steps_change_the_weights_and_reduce_the_loss():
    torch.manual_seed(0)
    den = EDMDenoiser(SmallUNet(width=16))
    y = torch.rand(32, 1, 8, 8) * 2 - 1
    fixed = lambda: edm_loss(den, y, generator=torch.Generator().manual_seed(123))  # noqa: E731
    before = fixed().item()
    weights = [p.detach().clone() for p in den.parameters()]
    opt = torch.optim.Adam(den.parameters(), lr=2e-3)
    opt.zero_grad()
    fixed().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(weights, den.parameters()))  # one step moves the weights
    for _ in range(19):  # the same batch, noise and levels: the loss must fall
        opt.zero_grad()
        fixed().backward()
        opt.step()
    assert fixed().item() < 0.5 * before


def test_ema_update_is_the_moving_average():
    model = SmallUNet(width=8)
    ema = EMA(model, decay=0.9)
    old = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for e, o, p in zip(ema.model.parameters(), old, model.parameters()):
        assert torch.allclose(e, 0.9 * o + 0.1 * p)
    assert not any(p.requires_grad for p in ema.model.parameters())


@pytest.mark.parametrize("sigma", [0.0, -0.5, float("nan"), float("inf")])
def test_edm_denoiser_rejects_sigma_that_is_not_positive(sigma):
    from fastgauss.edm import EDMDenoiser
    from fastgauss.edm.unet import SmallUNet

    net = EDMDenoiser(SmallUNet(channels=1, width=8)).eval()
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="sigma: .*> 0"):
        net(x, sigma)
    with pytest.raises(ValueError, match="sigma"):
        net(x, torch.tensor([0.5, sigma]))  # one bad level in a batch
    assert torch.isfinite(net(x, torch.tensor([0.5, 2.0]))).all()
