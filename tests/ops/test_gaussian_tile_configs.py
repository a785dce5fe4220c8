"""Every launch configuration of the Gaussian kernels (the gate builds each, the tuned ones and
the former ones gpu_check compares with) gives the reference result: choose_config picks
"large" only from 1024 rows, too big for the interpreter, so each config is forced here on odd,
small sizes that leave partial tiles in every dimension, with x - mu formed in the projection
and before it."""

import pytest
import torch

from fastgauss import reference as ref
from fastgauss.kernels import _gaussian_gate as gate
from fastgauss.kernels import gaussian as kernel

TOLERANCE = {"ieee": 1e-5, "tf32": 5e-3, "bf16": 2e-2}


def _cases():
    for size, cfg, family in gate.configs():
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
    got = kernel.denoise(x.float(), sigma.float().contiguous(), mean.float(), lam.float(), eigvecs,
                         torch.tensor([lam_rest]), output="denoised", precision=precision, centre=centre)
    assert got.shape == (levels, b, d) and torch.isfinite(got).all()
    for t in range(levels):
        expected = ref.gaussian_denoiser(x, sigma[:, t], mean, lam, u, lam_rest)
        err = ((got[t].double() - expected).norm() / expected.norm()).item()
        assert err <= TOLERANCE[precision], (t, err)


def test_large_tensor_core_tiles_only_on_aligned_operands():
    """128 x 128 tiles build without spills only as the JIT specialises aligned operands: the
    launcher checks alignment and falls back to 128 x 64 (tensor cores) or 128 x 32 (ieee) otherwise."""
    for precision, family in (("tf32", "mma"), ("bf16", "mma"), ("ieee", "fma")):
        assert kernel.plan(precision, 8192, 1, 3072, 3072).project.config == kernel.CONFIGS[(family, "large")]
        for kind in ("project", "reconstruct"):
            assert getattr(kernel.plan(precision, 8192, 1, 3072, 3072, aligned=False), kind).config == \
                kernel.CONFIGS[(family, "large-unaligned")]
    assert kernel.CONFIGS[("fma", "large")] != kernel.CONFIGS[("fma", "large-unaligned")]
    buffer = torch.zeros(8, 64)
    assert kernel.operands_aligned((buffer, buffer[1:]), (64, 32))
    assert not kernel.operands_aligned((buffer[:, 1:],), (64,))  # 4 bytes off
    assert not kernel.operands_aligned((buffer,), (64, 3071))


def test_gate_targets_name_gate_entries_and_the_launch_grids():
    names = {e[0] for e in kernel.gate_entries()}
    targets = list(kernel.gate_targets())
    # (d, r) in {3072, 12288} x {d, d / 8, 256}, 3 modes: the projection and the reconstruction with
    # and without x (lam_rest = 0); 6 'before' rows of two launches
    assert len(targets) == 3 * 6 * 3 + 2 * 6
    assert sum("lam_rest=0" in t[0] for t in targets) == 6 * 3
    for name, label, args, grid in targets:
        assert name in names, name
        d, r = args["dim"], args["rank"]
        precision = name.split("[")[1].split(",")[1].rstrip("]")
        p = kernel.plan(precision, 8192, 1, d, r, variant="before" if "before" in label else "tuned")
        assert grid == (p.project if "project" in name else p.reconstruct).grid
    assert ("gaussian_project[large,bf16]", "B=8192,d=3072,r=3072") in {(t[0], t[1]) for t in targets}
    assert dict((t[1], t[3]) for t in targets if t[0] == "gaussian_project[large,tf32]")["B=8192,d=3072,r=3072"] \
        == (64 * 24,)


def test_multi_level_projection_keeps_the_128x64_tiles():
    """With T > 1 the projection's level loop is not unrolled and its 128 x 128 build spills."""
    p = kernel.plan("tf32", 8192, 3, 3072, 3072)
    assert p.project.config == kernel.CONFIGS[("mma", "large-unaligned")]
    assert p.reconstruct.config == kernel.CONFIGS[("mma", "large")]


def test_narrow_projection_spans_rank_256_in_one_tile():
    """B >= 1024 rows onto 128 < r <= 256 columns (aligned, T = 1, tensor cores): one 64 x 256
    tile spans r, so x is read once; otherwise (and in the 'before' variant) the 64 x 64 tiles."""
    narrow, small = kernel.CONFIGS[("mma", "narrow")], kernel.CONFIGS[("mma", "small")]
    assert narrow.block_n == 256 and small.block_n == 64
    for precision in ("tf32", "bf16"):
        p = kernel.plan(precision, 8192, 1, 3072, 256)
        assert p.project.config == narrow and p.project.grid == (8192 // 64,) and not p.centred
        assert p.reconstruct.config == kernel.CONFIGS[("mma", "large")]
        assert kernel.plan(precision, 8192, 1, 3072, 160).project.config == narrow
        for other in (kernel.plan(precision, 8192, 2, 3072, 256), kernel.plan(precision, 8192, 1, 3072, 256,
                      aligned=False), kernel.plan(precision, 8192, 1, 3072, 384), kernel.plan(precision, 512, 1,
                      3072, 256), kernel.plan(precision, 8192, 1, 3072, 128),
                      kernel.plan(precision, 8192, 1, 3072, 256, variant="before")):
            assert other.project.config == small
    assert kernel.plan("ieee", 8192, 1, 3072, 256).project.config == kernel.CONFIGS[("fma", "small")]
    names = {e[0] for e in kernel.gate_entries()}
    assert "gaussian_project[narrow,bf16]" in names and "gaussian_reconstruct[narrow,bf16]" not in names
