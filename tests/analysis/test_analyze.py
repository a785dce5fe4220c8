"""fastgauss.analyze and ``fastgauss analyze``: the report of a model against the reference denoisers."""

import doctest
import json
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import fastgauss
from fastgauss import reference as ref
from fastgauss._core.seeds import seeded_generator
from fastgauss.analysis.measure import jacobian_iterations
from fastgauss.analysis.run import sigma_grid
from fastgauss.cli import main
from fastgauss.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=300)


def _reference_rmse_to_empirical(model, data, sigma, n, seed=0):
    """The RMSE of ``model`` to D_M at one level, from reference.py, on the inputs analyze draws."""
    g = seeded_generator(seed, 0, 0)
    y = data[torch.randperm(data.shape[0], generator=g)[:n]]
    x = y + sigma * torch.randn(y.shape, generator=g)
    flat = x.reshape(n, -1)
    d_m = ref.empirical_denoiser(flat, torch.full((n,), sigma, dtype=torch.float64), data.reshape(data.shape[0], -1))
    with torch.no_grad():
        d_model = model(x, sigma).reshape(n, -1).double()
    return float(((d_model - d_m).norm(dim=1) / math.sqrt(flat.shape[1])).mean())


def test_gaussian_denoiser_as_the_model_generalizes(tmp_path, digits):
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(digits))
    out = tmp_path / "report"
    sigmas = [0.1, 0.5, 2.0]
    result = fastgauss.analyze(g, digits, out=out, sigmas=sigmas, samples=32, n_eval=64, progress=False)
    s, t = result.summary, result.summary["per_sigma"]
    assert result.label == "generalizes" and s["verdict"]["label"] == "generalizes"
    assert t["sigma"] == sigmas
    assert max(t["rmse_gaussian"]) < 1e-5  # the model is D_G
    for sigma, got in zip(sigmas, t["rmse_empirical"]):
        expected = _reference_rmse_to_empirical(g, digits, sigma, 64)
        assert got > 0.01 and abs(got - expected) < 1e-4 * expected + 1e-7
    resolved = [a for a, ok in zip(t["jacobian_alignment"], t["jacobian_resolved"]) if ok]
    assert resolved and min(resolved) > 0.99  # J = U diag(w) U^T: its top singular vectors are the eigenvectors
    assert all(0 < v <= 1 + 1e-9 for v in t["linearity"])
    m = s["samples"]
    assert m["memorization_ratio"] == 0.0
    assert abs(m["flow_distance_gaussian"] - m["flow_distance_floor"]) < 1e-6  # the same sampler on D_G
    assert m["gl_score"] == m["gl_score_gaussian_euler"]  # the verdict's reference: D_G through the same sampler
    assert s["verdict"]["gl_score_gaussian"] == m["gl_score_gaussian_euler"]
    assert m["flow_distance_memorizing"] > m["flow_distance_gaussian"]
    # files: summary.json (the same dict), summary.md and the three figures
    saved = json.loads((out / "summary.json").read_text())
    assert saved["verdict"]["label"] == "generalizes" and saved["per_sigma"]["rmse_gaussian"] == t["rmse_gaussian"]
    text = (out / "summary.md").read_text()
    assert "generalizes" in text and "RMSE to D_G" in text
    for png in ("distances.png", "samples.png", "neighbors.png"):
        assert (out / png).stat().st_size > 1000
    parts = s["timings"]["parts"]
    assert set(parts) >= {"statistics", "distances", "linearity", "jacobian", "sampling", "memorization", "report"}
    assert s["timings"]["network_forward_seconds"] > 0 and s["timings"]["network_forward_images"] > 0
    assert result.samples["model"].shape == (32, 1, 8, 8)


def test_empirical_denoiser_as_the_model_memorizes(tmp_path, digits):
    data = digits[:120]
    model = fastgauss.EmpiricalDenoiser(data)
    result = fastgauss.analyze(model, data, out=tmp_path / "r", sigmas=[0.2, 1.0], samples=16, n_eval=32,
                               jacobian_k=2, progress=False)
    s, t = result.summary, result.summary["per_sigma"]
    assert result.label == "memorizes"
    # the Jacobian of D_M (J v batched under vmap) goes through the same report
    assert s["config"]["jacobian_k"] == 2 and len(t["jacobian_alignment"]) == 2
    assert all(a is None or 0.0 <= a <= 1.0 + 1e-6 for a in t["jacobian_alignment"])
    assert max(t["rmse_empirical"]) < 1e-5 and min(t["rmse_gaussian"]) > 0.01
    assert s["samples"]["memorization_ratio"] == 1.0 and s["samples"]["gl_score"] < 1e-3
    assert s["samples"]["flow_distance_memorizing"] < 1e-5
    assert s["samples"]["gl_score_fresh_gaussian"] > 0.3


def test_statistics_are_cached_beside_the_report_and_reused(tmp_path, digits):
    data = digits[:80]
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
    kwargs = dict(sigmas=[1.0], samples=4, n_eval=8, n_pairs=4, jacobian_k=0, progress=False)
    first = fastgauss.analyze(g, data, out=tmp_path / "a", **kwargs).summary["data"]
    assert first["stats_cache"] == "miss" and (tmp_path / "stats-cache").is_dir()
    second = fastgauss.analyze(g, data, out=tmp_path / "b", **kwargs).summary["data"]
    assert second["stats_cache"] == "hit" and second["stats_cache_file"] == first["stats_cache_file"]
    other = fastgauss.analyze(g, data[:79], out=None, cache_dir=tmp_path / "stats-cache", **kwargs).summary["data"]
    assert other["stats_cache"] == "miss" and other["stats_cache_file"] != first["stats_cache_file"]
    nowhere = fastgauss.analyze(g, data, out=None, **kwargs)
    assert nowhere.out is None and nowhere.summary["data"]["stats_cache"] == "uncached"


def test_sigma_grid_default_and_range():
    assert sigma_grid(0.002, 80.0) == [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
    assert sigma_grid(0.01, 1.0) == [0.05, 0.1, 0.2, 0.5, 1.0]
    narrow = sigma_grid(0.3, 0.6)  # fewer than 3 defaults inside: 8 log-spaced levels across the range
    assert len(narrow) == 8 and math.isclose(narrow[0], 0.3) and math.isclose(narrow[-1], 0.6)
    assert sigma_grid(0.002, 80.0, [0.5, 3]) == [0.5, 3.0]
    with pytest.raises(ValueError, match=r"sigmas.*range \[0.01, 1\]"):
        sigma_grid(0.01, 1.0, [0.5, 2.0])


def test_jacobian_iterations_flag_a_flat_spectrum():
    steep = torch.logspace(0, -8, 30, dtype=torch.float64)
    assert jacobian_iterations(steep, 1.0, 4, 6) == (2, True)
    flat = torch.linspace(1.0, 0.9, 30, dtype=torch.float64)
    assert jacobian_iterations(flat, 0.01, 4, 6)[1] is False


class _Conditional(nn.Module):
    label_dim = 10
    class_labels = None

    def forward(self, x, sigma, class_labels=None):
        return x * 0.5


class _Plain(nn.Module):
    def forward(self, x, sigma):
        return x * 0.5


def test_bad_input_names_the_argument(digits):
    data = digits[:20]
    with pytest.raises(ValueError, match="labels: the model is class-conditional"):
        fastgauss.analyze(_Conditional(), data, out=None, progress=False)
    with pytest.raises(ValueError, match="labels: the model takes no class labels"):
        fastgauss.analyze(_Plain(), data, out=None, labels=3, progress=False)
    with pytest.raises(TypeError, match="model"):
        fastgauss.analyze(42, data, out=None, progress=False)
    with pytest.raises(ValueError, match="dataset"):
        fastgauss.analyze(_Plain(), data[:1], out=None, progress=False)
    with pytest.raises(ValueError, match="samples"):
        fastgauss.analyze(_Plain(), data, out=None, samples=1, progress=False)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    with pytest.raises(ValueError, match=r"dataset: samples of shape \(1, 8, 8\)"):
        fastgauss.analyze(lambda x, s: conv(x), data, out=None, progress=False)
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(torch.randn(30, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"dataset: .*\(1, 8, 8\).*\(3, 4, 4\)"):
        fastgauss.analyze(g, data, out=None, progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from fastgauss.edm.train import TrainConfig, Trainer

    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(dataset="digits", n=40, width=8, steps=2, batch_size=8, eval_every=2, out=str(run))
    Trainer(config).run(progress=False, measure=False)
    return run


def test_cli_on_a_tiny_fastgauss_checkpoint(tmp_path, checkpoint, capsys):
    out = tmp_path / "rep"
    args = ["analyze", str(checkpoint), "--dataset", "digits", "--out", str(out), "--sigmas", "2,5",
            "--samples", "8", "--batch-size", "512", "--quiet", "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "report:" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["sigma_min"] == 0.002 and summary["model"]["sigma_max"] == 80.0
    assert summary["data"]["count"] == 1797 and summary["config"]["sigmas"] == [2.0, 5.0]
    assert summary["verdict"]["label"] in ("memorizes", "undertrained", "generalizes")
    assert all(math.isfinite(v) for v in summary["per_sigma"]["rmse_gaussian"] + summary["per_sigma"]["linearity"])
    assert summary["config"]["jacobian_k"] == 4 and len(summary["per_sigma"]["jacobian_alignment"]) == 2
    assert main([*args, "--jacobian-k", "0"]) == 0  # the cache serves the second run
    again = json.loads((out / "summary.json").read_text())
    assert again["data"]["stats_cache"] == "hit" and again["per_sigma"]["jacobian_alignment"] == []
    capsys.readouterr()


def _cli_error(args, capsys) -> str:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own one-line errors exit from inside parse_args
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    ours = [line for line in captured.err.splitlines() if line.startswith("fastgauss")]
    assert len(ours) == 1 and "Traceback" not in captured.err, captured.err
    return ours[0]


def test_cli_mistakes_are_one_line_exit_2(tmp_path, checkpoint, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]
    err = _cli_error(["analyze", str(empty), "--dataset", "digits", *base], capsys)
    assert "model" in err and str(empty) in err and "diffusers" in err
    pkl = tmp_path / "snapshot.pkl"
    pkl.write_bytes(pickle.dumps({"ema": None}))
    assert "trust" in _cli_error(["analyze", str(pkl), "--dataset", "digits", *base], capsys)
    err = _cli_error(["analyze", str(checkpoint), "--dataset", "faces", *base], capsys)
    assert "dataset" in err and "25" in err and "8" in err  # both shapes named
    err = _cli_error(["analyze", str(checkpoint), "--dataset", "digits", "--sigmas", "100", *base], capsys)
    assert "sigmas" in err and "80" in err
    err = _cli_error(["analyze", str(tmp_path / "missing"), "--dataset", "digits", *base], capsys)
    assert "missing" in err
    assert "--samples" in _cli_error(["analyze", str(checkpoint), "--dataset", "digits", "--samples", "1", *base],
                                     capsys)


def test_cli_class_conditional_diffusers_model_needs_labels(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, num_class_embeds=3,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = tmp_path / "unet"
    unet.save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    data = np.asarray(load_dataset("digits", limit=30))
    np.save(tmp_path / "d.npy", data)
    base = ["analyze", str(folder), "--dataset", str(tmp_path / "d.npy"), "--out", str(tmp_path / "o"), "--quiet",
            "--device", "cpu", "--samples", "4", "--sigmas", "0.5,2", "--jacobian-k", "0"]
    err = _cli_error(base, capsys)
    assert "labels" in err
    assert main([*base, "--labels", "2"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["model"]["labels"] == 2 and summary["verdict"]["label"] in ("memorizes", "undertrained",
                                                                                "generalizes")


@pytest.mark.parametrize("name", ["fastgauss.analysis.run", "fastgauss.analysis.stats_cache"])
def test_docstring_examples(name):
    import importlib
    import sys

    importlib.import_module(name)
    result = doctest.testmod(sys.modules[name], optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
