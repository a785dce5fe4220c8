"""from_diffusers against diffusers' own schedulers and against the exact Gaussian denoiser."""

from __future__ import annotations

import math

import pytest
import torch

import fastgauss

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDPMScheduler, EDMEulerScheduler, EulerDiscreteScheduler,  # noqa: E402
                       UNet2DModel)

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def tiny_unet(**kwargs) -> UNet2DModel:
    config = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                  norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    config.update(kwargs)
    return UNet2DModel(**config)


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    """A random-weight UNet2DModel (with attention), saved and loaded from disk."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("unet")
    tiny_unet().save_pretrained(folder)
    return UNet2DModel.from_pretrained(folder).eval()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_matches_euler_pred_original_sample(unet, prediction_type):
    scheduler = EulerDiscreteScheduler(prediction_type=prediction_type)
    den = fastgauss.from_diffusers(unet, scheduler)
    for sigma in (0.013, 0.31, 1.7, 23.0, 150.0):
        scheduler.set_timesteps(sigmas=[sigma, 0.0])
        t, s = scheduler.timesteps[0], float(scheduler.sigmas[0])
        x = torch.randn(3, 1, 8, 8, generator=_gen(1)) * math.sqrt(1 + s**2)
        with torch.no_grad():
            out = unet(scheduler.scale_model_input(x, t), t).sample
            ref = scheduler.step(out, t, x).pred_original_sample
            got = den(x, s)
        assert abs(den.timestep(torch.tensor([s], dtype=torch.float64)).item() - t.item()) <= 1e-4 * (1 + t.item())
        err = (got - ref).abs().max().item()
        assert err <= 2e-5 * (1 + ref.abs().max().item()), (prediction_type, sigma, err)


def test_continuous_timesteps_match_euler(unet):
    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous")
    den = fastgauss.from_diffusers(unet, scheduler)
    for sigma in (0.05, 2.0, 60.0):
        scheduler.set_timesteps(sigmas=[sigma, 0.0])
        t, s = scheduler.timesteps[0], float(scheduler.sigmas[0])
        assert abs(t.item() - math.log(s) / 4) < 1e-6
        x = torch.randn(2, 1, 8, 8, generator=_gen(2)) * math.sqrt(1 + s**2)
        with torch.no_grad():
            ref = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).pred_original_sample
            got = den(x, s)
        assert (got - ref).abs().max().item() <= 2e-5 * (1 + ref.abs().max().item())


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_matches_ddpm_step_at_integer_timesteps(unet, prediction_type):
    scheduler = DDPMScheduler(clip_sample=False, prediction_type=prediction_type)
    den = fastgauss.from_diffusers(unet, DDPMScheduler(clip_sample=True, prediction_type=prediction_type))
    y = torch.rand(4, 1, 8, 8, generator=_gen(3)) * 2 - 1
    for t in (0, 1, 37, 500, 998, 999):
        abar = scheduler.alphas_cumprod[t]
        x_vp = abar.sqrt() * y + (1 - abar).sqrt() * torch.randn(y.shape, generator=_gen(t))
        sigma = math.sqrt((1 - float(abar)) / float(abar))
        with torch.no_grad():
            ref = scheduler.step(unet(x_vp, t).sample, t, x_vp, generator=_gen(0)).pred_original_sample
            got = den(x_vp / abar.sqrt(), sigma)
        assert den.timestep(torch.tensor([sigma], dtype=torch.float64)).item() == pytest.approx(t, abs=1e-9)
        assert (got - ref).abs().max().item() <= 2e-5 * (1 + ref.abs().max().item()), (prediction_type, t)
    assert den.sigma_min == pytest.approx(math.sqrt((1 - float(scheduler.alphas_cumprod[0])) /
                                                    float(scheduler.alphas_cumprod[0])))


def test_never_clips():
    class Constant(torch.nn.Module):
        def forward(self, sample, timestep):
            return torch.full_like(sample, 3.0)

    den = fastgauss.from_diffusers(Constant(), DDPMScheduler(prediction_type="sample", clip_sample=True))
    assert torch.equal(den(torch.zeros(2, 1, 4, 4), 1.0), torch.full((2, 1, 4, 4), 3.0))


# --------------------------------------------------------------- exact Gaussian networks
def _gaussian(d=16, seed=0):
    g = _gen(seed)
    mu = torch.randn(d, generator=g, dtype=torch.float64) * 0.3
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    lam = torch.logspace(0, -4, d, dtype=torch.float64)  # a wide spectrum: small sigma matters
    q, _ = torch.linalg.qr(a)
    cov = q @ torch.diag(lam) @ q.T
    return mu, cov


def _wiener(x, sigma, mu, cov):
    """Float64 D_G(x; sigma) for x [B, d], sigma [B]."""
    eye = torch.eye(mu.numel(), dtype=torch.float64)
    out = [mu + cov @ torch.linalg.solve(cov + s**2 * eye, xi - mu) for xi, s in zip(x, sigma)]
    return torch.stack(out)


class ExactVP(torch.nn.Module):
    """The exact network of a DDPM-style model of N(mu, cov): eps, v or x0 in closed form.

    It reads the noise level off the (fractional) timestep by the same log-sigma interpolation
    that defines it, from its own copy of the schedule.
    """

    def __init__(self, scheduler, mu, cov, prediction_type, shape=(1, 4, 4)):
        super().__init__()
        abar = scheduler.alphas_cumprod.to(torch.float64)
        self.register_buffer("log_sigmas", (((1 - abar) / abar).sqrt()).log())
        self.register_buffer("mu", mu)
        self.register_buffer("cov", cov)
        self.prediction_type, self.shape = prediction_type, shape

    def forward(self, sample, timestep):
        t = timestep.to(torch.float64).expand(sample.shape[0])
        low = t.floor().long().clamp(max=self.log_sigmas.numel() - 2)
        frac = t - low
        sigma = ((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[low + 1]).exp()
        x_vp = sample.to(torch.float64).reshape(sample.shape[0], -1)
        alpha, std = (1 + sigma**2).rsqrt()[:, None], (sigma / (1 + sigma**2).sqrt())[:, None]
        x = x_vp / alpha
        d = _wiener(x, sigma, self.mu, self.cov)
        eps = (x - d) / sigma[:, None]
        out = {"epsilon": eps, "v_prediction": alpha * eps - std * d, "sample": d}[self.prediction_type]
        return out.reshape(sample.shape)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_exact_gaussian_network_equals_gaussian_denoiser(prediction_type):
    mu, cov = _gaussian()
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    den = fastgauss.from_diffusers(ExactVP(scheduler, mu, cov, prediction_type), scheduler)
    gauss = fastgauss.GaussianDenoiser.from_covariance(mu.reshape(1, 4, 4), cov, dtype=torch.float64)
    sigmas = torch.logspace(math.log10(den.sigma_min), math.log10(den.sigma_max), 29, dtype=torch.float64)
    sigmas[0], sigmas[-1] = den.sigma_min, den.sigma_max
    y = (mu + torch.randn(29, 16, generator=_gen(5), dtype=torch.float64) @ torch.linalg.cholesky(cov).T)
    x = (y + sigmas[:, None] * torch.randn(29, 16, generator=_gen(6), dtype=torch.float64)).reshape(29, 1, 4, 4)
    got = den(x, sigmas).reshape(29, 16)
    ref = gauss(x, sigmas).reshape(29, 16)
    rel = ((got - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    assert rel <= 1e-5, rel
    # and the reference itself is the float64 formula
    assert torch.allclose(ref, _wiener(x.reshape(29, 16), sigmas, mu, cov), rtol=1e-9, atol=1e-9)


class ExactEDM(torch.nn.Module):
    """The raw F of an EDM-style model of N(mu, cov): F = (D - c_skip x) / c_out."""

    def __init__(self, mu, cov, sign, sigma_data=0.5):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("cov", cov)
        self.sign, self.sd = sign, sigma_data

    def forward(self, sample, timestep):
        sigma = (4 * timestep.to(torch.float64)).exp().expand(sample.shape[0])
        var = sigma**2 + self.sd**2
        x = sample.to(torch.float64).reshape(sample.shape[0], -1) * var.sqrt()[:, None]
        d = _wiener(x, sigma, self.mu, self.cov)
        c_skip, c_out = (self.sd**2 / var)[:, None], (sigma * self.sd / var.sqrt())[:, None]
        return (self.sign * (d - c_skip * x) / c_out).reshape(sample.shape)


@pytest.mark.parametrize("prediction_type,sign", [("epsilon", 1.0), ("v_prediction", -1.0)])
def test_edm_scheduler_preconditioning(prediction_type, sign):
    mu, cov = _gaussian(seed=1)
    scheduler = EDMEulerScheduler(prediction_type=prediction_type)
    den = fastgauss.from_diffusers(ExactEDM(mu, cov, sign), scheduler)
    assert (den.sigma_min, den.sigma_max) == (0.002, 80.0)
    sigmas = torch.logspace(math.log10(0.002), math.log10(80.0), 9, dtype=torch.float64)
    x = (mu + sigmas[:, None] * torch.randn(9, 16, generator=_gen(7), dtype=torch.float64)).reshape(9, 1, 4, 4)
    got, ref = den(x, sigmas).reshape(9, 16), _wiener(x.reshape(9, 16), sigmas, mu, cov)
    assert ((got - ref).norm(dim=1) / ref.norm(dim=1)).max().item() <= 1e-5
    # diffusers' own preconditioning gives the same D
    s = torch.tensor(1.3, dtype=torch.float64)
    xs = torch.randn(2, 1, 4, 4, generator=_gen(8), dtype=torch.float64)
    net = den.network
    ref2 = scheduler.precondition_outputs(xs, net(scheduler.precondition_inputs(xs, s),
                                                  scheduler.precondition_noise(s)), s)
    assert torch.allclose(den(xs, 1.3), ref2, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- protocol
def test_sigma_range_and_shapes(unet):
    den = fastgauss.from_diffusers(unet, DDPMScheduler())
    x = torch.randn(2, 1, 8, 8)
    for bad in (0.001, 200.0):
        with pytest.raises(ValueError, match=r"sigma: .*outside the model's range \[0\.01"):
            den(x, bad)
    for bad in (float("nan"), 0.0, -1.0):  # the one rule of fastgauss._core.sigma first
        with pytest.raises(ValueError, match=r"sigma: expected finite noise levels > 0"):
            den(x, bad)
    with pytest.raises(ValueError, match="sigma: expected"):
        den(x, torch.ones(3))
    with pytest.raises(ValueError, match=r"x: the model takes inputs \[B, 1, 8, 8\]"):
        den(torch.randn(2, 3, 8, 8), 0.5)
    per_sample = den(x, torch.tensor([0.5, 3.0]))
    assert torch.allclose(per_sample[1:], den(x[1:], 3.0), atol=1e-5)
    assert torch.allclose(per_sample[:1], den(x[:1], 0.5), atol=1e-5)
    assert den(x, torch.tensor(0.5)).dtype == torch.float32
    assert den.feature_shape == (1, 8, 8) and not den.training and not unet.training
    assert den(x, den.sigma_min * (1 - 1e-7)).shape == x.shape  # float32 rounding of the end is inside


def test_unknown_prediction_type(unet):
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        fastgauss.from_diffusers(unet, DDPMScheduler(prediction_type="flow"))


def test_class_labels():
    torch.manual_seed(1)
    unet = tiny_unet(num_class_embeds=3).eval()
    den = fastgauss.from_diffusers(unet, DDPMScheduler())
    assert den.label_dim == 3
    x = torch.randn(3, 1, 8, 8)
    with pytest.raises(ValueError, match="class_labels: this model is class-conditional"):
        den(x, 0.5)
    with pytest.raises(ValueError, match=r"class_labels: labels must lie in 0\.\.2"):
        den(x, 0.5, class_labels=3)
    with pytest.raises(ValueError, match="class_labels: expected one label or 3"):
        den(x, 0.5, class_labels=torch.tensor([0, 1]))
    labels = torch.tensor([2, 0, 1])
    got = den(x, 0.5, class_labels=labels)
    t = den.timestep(torch.full((3,), 0.5, dtype=torch.float64)).float()
    with torch.no_grad():
        ref = x - 0.5 * unet(x / math.sqrt(1.25), t, class_labels=labels).sample
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(den(x, 0.5, class_labels=1), den(x, 0.5, class_labels=torch.ones(3, dtype=torch.long)))
    assert not torch.allclose(den(x, 0.5, class_labels=0), den(x, 0.5, class_labels=1))
    den.class_labels = 2  # a default for callers that pass none (samplers)
    assert torch.equal(den(x, 0.5), den(x, 0.5, class_labels=2))
    with pytest.raises(ValueError, match="class_labels: this model is unconditional"):
        fastgauss.from_diffusers(tiny_unet(), DDPMScheduler())(x, 0.5, class_labels=1)


def test_max_batch_and_autocast(unet):
    den = fastgauss.from_diffusers(unet, DDPMScheduler())
    x = torch.randn(7, 1, 8, 8, generator=_gen(9))
    sig = torch.linspace(0.05, 5, 7)
    full = den(x, sig)
    chunked = fastgauss.from_diffusers(unet, DDPMScheduler(), max_batch=3)(x, sig)
    assert torch.allclose(full, chunked, rtol=1e-5, atol=2e-5)  # conv kernels differ by batch size
    low = fastgauss.from_diffusers(unet, DDPMScheduler(), dtype=torch.bfloat16)(x, sig)
    assert low.dtype == torch.float32
    assert (low - full).norm() / full.norm() < 5e-2
    assert not torch.equal(low, full)  # the network really ran in bf16
    with pytest.raises(ValueError, match="max_batch"):
        fastgauss.from_diffusers(unet, DDPMScheduler(), max_batch=0)
    with pytest.raises(ValueError, match="dtype"):
        fastgauss.from_diffusers(unet, DDPMScheduler(), dtype=torch.int8)


def test_jvp_through_adapter_matches_finite_differences(unet):
    net = tiny_unet()
    net.load_state_dict(unet.state_dict())
    den = fastgauss.from_diffusers(net.double(), DDPMScheduler(prediction_type="v_prediction"))
    x = torch.randn(2, 1, 8, 8, generator=_gen(10), dtype=torch.float64)
    v = torch.randn(3, 2, 1, 8, 8, generator=_gen(11), dtype=torch.float64)
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    d, jv = fastgauss.jvp(den, x, sigma, v)
    h = 1e-6
    for k in range(3):
        fd = (den(x + h * v[k], sigma) - den(x - h * v[k], sigma)) / (2 * h)
        assert torch.allclose(jv[k], fd, rtol=1e-5, atol=1e-7)
    assert torch.allclose(d, den(x, sigma), atol=1e-12)
    # torch.func.jvp directly (no fastgauss context): the adapter switches attention to the math path itself
    _, jv0 = torch.func.jvp(lambda z: den(z, sigma), (x,), (v[0],))
    assert torch.allclose(jv0, jv[0], rtol=1e-9, atol=1e-12)


def test_score_sde_ve_scheduler():
    """ScoreSdeVeScheduler: the network takes (x, sigma) and returns the score; D = x + sigma^2 score."""
    mu, cov = _gaussian(seed=2)

    class ExactScore(torch.nn.Module):
        def forward(self, sample, timestep):
            sigma = timestep.to(torch.float64).expand(sample.shape[0])
            x = sample.reshape(sample.shape[0], -1)
            return ((_wiener(x, sigma, mu, cov) - x) / sigma[:, None] ** 2).reshape(sample.shape)

    scheduler = diffusers.ScoreSdeVeScheduler()
    den = fastgauss.from_diffusers(ExactScore(), scheduler)
    assert (den.sigma_min, den.sigma_max) == (scheduler.config.sigma_min, scheduler.config.sigma_max)
    sigmas = torch.logspace(math.log10(den.sigma_min), math.log10(den.sigma_max), 7, dtype=torch.float64)
    x = (mu + sigmas[:, None] * torch.randn(7, 16, generator=_gen(12), dtype=torch.float64)).reshape(7, 1, 4, 4)
    got, ref = den(x, sigmas).reshape(7, 16), _wiener(x.reshape(7, 16), sigmas, mu, cov)
    assert ((got - ref).norm(dim=1) / ref.norm(dim=1)).max().item() <= 1e-8


def test_half_precision_network(unet):
    net = tiny_unet()
    net.load_state_dict(unet.state_dict())
    full = fastgauss.from_diffusers(unet, DDPMScheduler())
    half = fastgauss.from_diffusers(net.to(torch.bfloat16), DDPMScheduler())
    x = torch.randn(3, 1, 8, 8, generator=_gen(13))
    out = half(x, 0.7)
    assert out.dtype == torch.float32  # the combination with x is done in float32
    ref = full(x, 0.7)
    assert (out - ref).norm() / ref.norm() < 5e-2
