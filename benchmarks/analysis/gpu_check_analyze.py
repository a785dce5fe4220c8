"""gpu_check entries for ``fastgauss.analyze``: the reference models come out right on the device,
and the overhead case of benchmarks/analysis/bench_analyze.py (a 3 x 32 x 32 diffusers UNet2DModel, N = 10 000
synthetic images) is timed: fastgauss's own measurements against the network's forward passes.

The diffusers parts skip cleanly, with a line saying so, where diffusers is not importable (the
device machine has none unless its wheels are carried: benchmarks/results/README.md).
"""

from __future__ import annotations

import math

import torch

import fastgauss
from gpu_check_lib import Report


def _diffusers():
    try:
        import diffusers
    except ImportError:
        print("[skip] analyze: diffusers is not importable; the UNet2DModel cases are not run", flush=True)
        return None
    return diffusers


def _synthetic(n: int, shape, seed: int = 0) -> torch.Tensor:
    """[n, *shape] smooth images in [-1, 1] (coarse noise upsampled, plus grain, squashed)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.randn((n, c, max(1, h // 4), max(1, w // 4)), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return torch.tanh(smooth + 0.1 * torch.randn((n, *shape), generator=g))


def check_analyze(report: Report, device, *, smoke: bool) -> None:
    n, shape = (64, (1, 4, 4)) if smoke else (2000, (3, 16, 16))
    data = _synthetic(n, shape).to(device)
    # smoke: the Triton interpreter runs every kernel, so as few calls as still cover each part
    kwargs = (dict(sigmas=[0.5], samples=4, steps=2, n_eval=8, n_pairs=2, jacobian_k=1) if smoke else
              dict(sigmas=[0.1, 0.5, 2.0], samples=64, n_eval=128, n_pairs=32, jacobian_k=2))
    kwargs.update(out=None, progress=False)
    case = f"N={n} {'x'.join(map(str, shape))}"
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data)).to(device)
    got = fastgauss.analyze(g, data, **kwargs).summary
    report.check("analyze: D_G as the model, max RMSE to D_G", case, max(got["per_sigma"]["rmse_gaussian"]), 1e-5)
    report.check("analyze: D_G as the model reads generalizes", case,  # GL equals its reference exactly
                 0.0 if got["verdict"]["label"] == "generalizes" else 1.0, 0)
    emp = fastgauss.EmpiricalDenoiser(data)
    got = fastgauss.analyze(emp, data, **{**kwargs, "jacobian_k": 0}).summary
    report.check("analyze: D_M as the model, max RMSE to D_M", case, max(got["per_sigma"]["rmse_empirical"]), 1e-5)
    report.check("analyze: D_M as the model, 1 - memorization ratio", case,
                 1.0 - got["samples"]["memorization_ratio"], 0)
    diffusers = _diffusers()
    if diffusers is None:
        return
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=shape[1], in_channels=shape[0], out_channels=shape[0],
                                 block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).to(device)
    model = fastgauss.from_diffusers(unet, diffusers.DDPMScheduler())
    got = fastgauss.analyze(model, data, **kwargs).summary
    values = [*got["per_sigma"]["rmse_gaussian"], *got["per_sigma"]["rmse_empirical"],
              *got["per_sigma"]["linearity"], *got["per_sigma"]["jacobian_alignment"], got["samples"]["gl_score"]]
    report.check("analyze: UNet2DModel (attention) runs, non-finite results", case,
                 float(sum(not math.isfinite(v) for v in values)), 0)


def time_analyze(report: Report, device, n: int = 10_000) -> None:
    """The bench_analyze case on the device: analyze's defaults, jacobian_k=0, cold statistics."""
    diffusers = _diffusers()
    if diffusers is None:
        return
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).to(device).eval()
    model = fastgauss.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000))
    data = _synthetic(n, (3, 32, 32)).to(device)
    timing = fastgauss.analyze(model, data, out=None, jacobian_k=0, progress=False).summary["timings"]
    case = f"UNet2DModel DDPM-CIFAR10 3x32x32, N={n}, {timing['network_forward_images']} images forward"
    report.time("analyze: network forward passes", case, 1e3 * timing["network_forward_seconds"])
    report.time("analyze: fastgauss's own measurements", case, 1e3 * timing["fastgauss_seconds"],
                baseline="analyze: network forward passes")  # speedup column = forward / own (goal >= 4)
    report.time("analyze: statistics (moments + eigh, cold)", case, 1e3 * timing["parts"]["statistics"]["seconds"])
    report.time("analyze: total", case, 1e3 * timing["total_seconds"])
    print(f"[analyze] fastgauss's own time is {100 * timing['overhead_vs_forward']:.1f} % of the forward passes' "
          f"(goal <= 25 %)", flush=True)


def timing_parts() -> list:
    """The timed part for a planner that takes ``gpu_check_lib.Part`` entries (about a minute on an H200)."""
    from gpu_check_lib import Part

    return [Part("analyze", "analyze UNet2DModel 3x32x32 N=10000", 3, 60.0, time_analyze)]
