"""from_edm: NVlabs-style EDM networks (x, sigma, one-hot labels) and fastgauss's own EDMDenoiser."""

from __future__ import annotations

import pytest
import torch

import fastgauss
from fastgauss.edm import EDMDenoiser
from fastgauss.edm.unet import SmallUNet


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class TinyPrecond(torch.nn.Module):
    """The calling convention of NVlabs' EDMPrecond: net(x, sigma, class_labels) with one-hot labels."""

    def __init__(self, label_dim=0, sigma_min=0.0, sigma_max=float("inf"), channels=2, res=4):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = res, channels, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, 0.5
        d = channels * res * res
        self.lin = torch.nn.Linear(d, d)
        self.emb = torch.nn.Linear(max(label_dim, 1), d, bias=False)
        self.calls = []

    def forward(self, x, sigma, class_labels=None, force_fp32=False):
        self.calls.append((x.shape[0], None if class_labels is None else class_labels.clone()))
        sigma = sigma.to(torch.float32).reshape(-1, 1)
        h = x.reshape(x.shape[0], -1).to(torch.float32)
        if self.label_dim:
            h = h + self.emb(class_labels.to(torch.float32))
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        return (c_skip * h + torch.tanh(self.lin(h)) * sigma / (1 + sigma)).reshape(x.shape)


def test_unconditional_defaults_and_direct_call():
    net = TinyPrecond()
    den = fastgauss.from_edm(net)
    assert (den.sigma_min, den.sigma_max, den.feature_shape, den.label_dim) == (0.002, 80.0, (2, 4, 4), 0)
    x = torch.randn(5, 2, 4, 4, generator=_gen(0))
    s = torch.linspace(0.01, 50, 5)
    assert torch.equal(den(x, s), net(x, s))
    with pytest.raises(ValueError, match=r"outside the model's range \[0\.002, 80\]"):
        den(x, 0.001)
    ve = fastgauss.from_edm(TinyPrecond(sigma_min=0.02, sigma_max=100.0))
    assert (ve.sigma_min, ve.sigma_max) == (0.02, 100.0)
    with pytest.raises(ValueError, match="x: the model takes inputs"):
        den(torch.randn(2, 3, 4, 4), 1.0)


def test_class_labels_one_hot():
    net = TinyPrecond(label_dim=4)
    den = fastgauss.from_edm(net, max_batch=2)
    x = torch.randn(3, 2, 4, 4, generator=_gen(1))
    with pytest.raises(ValueError, match="class_labels: this model is class-conditional"):
        den(x, 1.0)
    net.calls.clear()
    got = den(x, 1.0, class_labels=torch.tensor([3, 0, 2]))
    assert [c[0] for c in net.calls] == [2, 1]  # chunked by max_batch
    onehot = torch.cat([c[1] for c in net.calls])
    assert torch.equal(onehot, torch.nn.functional.one_hot(torch.tensor([3, 0, 2]), 4).float())
    assert torch.allclose(got, net(x, torch.ones(3), torch.nn.functional.one_hot(torch.tensor([3, 0, 2]), 4)))
    rows = torch.nn.functional.one_hot(torch.tensor([1]), 4).float()
    assert torch.equal(den(x, 1.0, class_labels=rows), den(x, 1.0, class_labels=1))
    with pytest.raises(ValueError, match=r"class_labels: labels must lie in 0\.\.3"):
        den(x, 1.0, class_labels=-1)


def test_fastgauss_edm_denoiser_and_jvp():
    torch.manual_seed(0)
    net = EDMDenoiser(SmallUNet(channels=1, width=8)).double()
    torch.nn.init.normal_(net.network.out[-1].weight, std=0.1)  # a non-trivial F
    den = fastgauss.from_edm(net, feature_shape=(1, 7, 7))
    x = torch.randn(2, 1, 7, 7, generator=_gen(2), dtype=torch.float64)
    sigma = torch.tensor([0.05, 3.0], dtype=torch.float64)
    assert torch.equal(den(x, sigma), net(x, sigma))
    v = torch.randn(2, 2, 1, 7, 7, generator=_gen(3), dtype=torch.float64)
    _, jv = fastgauss.jvp(den, x, sigma, v)
    h = 1e-6
    fd = (den(x + h * v[0], sigma) - den(x - h * v[0], sigma)) / (2 * h)
    assert torch.allclose(jv[0], fd, rtol=1e-5, atol=1e-8)


def test_data_shape_and_latent_checks():
    den = fastgauss.from_edm(TinyPrecond(channels=4, res=8), latent=True)
    den.check_data(torch.zeros(3, 4, 8, 8))
    with pytest.raises(ValueError, match=r"data: .*pixel data.*latent space \(\[4, 8, 8\]\)"):
        den.check_data(torch.zeros(3, 3, 64, 64))
    pixel = fastgauss.from_edm(TinyPrecond(channels=3, res=8))
    with pytest.raises(ValueError, match=r"data: channel count differs from the model's: data \[1, 8, 8\], "
                                         r"model \[3, 8, 8\]"):
        pixel.check_data(torch.zeros(3, 1, 8, 8))


@pytest.mark.parametrize("name", ["fastgauss.models.edm", "fastgauss.models.score", "fastgauss.models.diffusers"])
def test_docstring_examples(name):
    import doctest
    import importlib

    if name.endswith("diffusers"):
        pytest.importorskip("diffusers")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
