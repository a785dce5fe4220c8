"""``fastgauss analyze`` overhead on CPU: fastgauss's own measurements against the network's forward passes.

    pytest benchmarks/analysis/bench_analyze.py -s

The case of issue 11: a 3 x 32 x 32 diffusers ``UNet2DModel`` with the DDPM CIFAR-10 architecture
(channels 128, 256, 256, 256, two layers a block, attention at 16 x 16: 35.7 M parameters; random
weights, since the cost of a forward pass does not depend on them) through
``fastgauss.from_diffusers`` with a ``DDPMScheduler``, and N = 10 000 synthetic smooth images.
``fastgauss.analyze`` runs with its defaults (8 noise levels, 128 noisy inputs a level, 32
linearity pairs, 64 samples of 10 Euler steps) except the Jacobian part (``jacobian_k=0``), which
is the network's own J v / J^T u products and is reported apart in any case. The statistics are
computed from a cold cache (moments and the eigendecomposition included in fastgauss's time).

Prints the time of every part, the network's share, and fastgauss's own time (moments, D_G, D_M,
neighbours, linearity bookkeeping, samplers) as a fraction of the forward passes'; the goal is at
most 25 %. Skips when diffusers is not importable. Writes the summary to
benchmarks/results/bench_analyze-cpu.json when FASTGAUSS_BENCH_SAVE=1.
"""

import json
import os
from pathlib import Path

import pytest
import torch

import fastgauss

N, SHAPE = 10_000, (3, 32, 32)


def synthetic_images(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, 32, 32] smooth images in [-1, 1]: 8 x 8 noise upsampled, plus fine grain, squashed."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((n, 3, 8, 8), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=SHAPE[1:], mode="bilinear", align_corners=False)
    return torch.tanh(smooth + 0.1 * torch.randn((n, *SHAPE), generator=g))


def ddpm_cifar10_unet():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    return fastgauss.from_diffusers(unet.eval(), diffusers.DDPMScheduler(num_train_timesteps=1000))


def test_analyze_overhead_is_at_most_a_quarter_of_the_forward_passes(tmp_path):
    model = ddpm_cifar10_unet()
    data = synthetic_images(N)
    result = fastgauss.analyze(model, data, out=tmp_path / "report", jacobian_k=0, progress=False)
    timing = result.summary["timings"]
    print(f"\nfastgauss analyze, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M-parameter UNet2DModel "
          f"3x32x32, N = {N} synthetic images, {torch.get_num_threads()} threads")
    print(f"{'part':>14} {'seconds':>9} {'network':>9}")
    for name, part in timing["parts"].items():
        print(f"{name:>14} {part['seconds']:>9.2f} {part['network_seconds']:>9.2f}")
    own, forward = timing["fastgauss_seconds"], timing["network_forward_seconds"]
    stats = timing["parts"]["statistics"]["seconds"]
    print(f"network forward passes: {forward:.1f} s for {timing['network_forward_images']} images; fastgauss's own "
          f"measurements: {own:.1f} s = {100 * own / forward:.1f} % of them (statistics {stats:.1f} s of it; "
          f"{100 * (own - stats) / forward:.1f} % once they are cached)")
    if os.environ.get("FASTGAUSS_BENCH_SAVE") == "1":
        folder = Path(__file__).resolve().parents[1] / "results"
        (folder / "bench_analyze-cpu.json").write_text(json.dumps(
            {"case": f"UNet2DModel DDPM-CIFAR10 3x32x32, N={N}", "threads": torch.get_num_threads(),
             "timings": timing}, indent=2))
    assert own <= 0.25 * forward
