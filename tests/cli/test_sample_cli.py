"""``fastgauss sample``: samples of a saved model, with and without Gaussian teleportation."""

import json
import subprocess
import sys

import pytest
import torch

from fastgauss.cli import main
from fastgauss.data import load_dataset
from fastgauss.edm.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(TrainConfig(dataset="digits", n=64, width=8, steps=2, batch_size=16, out=str(out)),
                      load_dataset("digits"))
    trainer.run(progress=False, measure=False)
    return trainer.save(out / "checkpoint.pt")


def test_sample_writes_samples_grid_and_summary(checkpoint, tmp_path):
    out = tmp_path / "plain"
    assert main(["sample", str(checkpoint), "--dataset", "digits", "--samples", "5", "--sampling-steps", "4",
                 "--teleport", "none", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    saved = torch.load(out / "samples.pt")
    summary = json.loads((out / "summary.json").read_text())
    assert saved["samples"].shape == (5, 1, 8, 8) and torch.isfinite(saved["samples"]).all()
    assert summary["nfe_per_sample"] == summary["nfe_without_teleport"] == 7 and summary["switch_sigma"] is None
    assert (out / "samples.png").stat().st_size > 0


def test_sample_teleports_to_a_given_level_and_saves_network_calls(checkpoint, tmp_path):
    out = tmp_path / "jump"
    assert main(["sample", str(checkpoint), "--dataset", "digits", "--samples", "3", "--sampling-steps", "8",
                 "--teleport", "1.0", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["switch_sigma"] <= 1.0
    assert summary["nfe_per_sample"] < summary["nfe_without_teleport"] == 15
    # auto on a 2-step model: whatever level it picks is recorded and used
    out = tmp_path / "auto"
    assert main(["sample", str(checkpoint), "--dataset", "digits", "--samples", "3", "--sampling-steps", "6",
                 "--teleport", "auto", "--tol", "10", "--device", "cpu", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teleport"] == "auto" and summary["tol"] == 10.0
    assert summary["nfe_per_sample"] < summary["nfe_without_teleport"]  # tol = 10: the Gaussian holds everywhere
    assert summary["switch_bound"] <= 10.0 and summary["auto_probe_nfe"] > 0
    # a tiny tol: the jump the bound allows is short or none, and what it allows is recorded
    out = tmp_path / "tight"
    assert main(["sample", str(checkpoint), "--dataset", "digits", "--samples", "3", "--sampling-steps", "6",
                 "--teleport", "auto", "--tol", "1e-9", "--device", "cpu", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    tight = json.loads((out / "summary.json").read_text())
    assert tight["switch_sigma"] is None and tight["nfe_per_sample"] == tight["nfe_without_teleport"]


@pytest.mark.parametrize("args,needle", [
    (["--teleport", "soon"], "--teleport"),
    (["--samples", "0"], "--samples"),
    (["--sampler", "ddim"], "--sampler"),
])
def test_sample_option_mistakes_are_one_line(checkpoint, tmp_path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "fastgauss", "sample", str(checkpoint), "--dataset", "digits",
                           "--out", str(tmp_path), *args], capture_output=True, text=True)
    assert proc.returncode == 2 and needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sample_refuses_a_folder_that_is_no_model_and_mismatched_data(checkpoint, tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--dataset", "digits", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "MODEL" in capsys.readouterr().err
    data = tmp_path / "other.npy"
    import numpy as np
    np.save(data, np.zeros((10, 1, 4, 4), dtype=np.float32))
    assert main(["sample", str(checkpoint), "--dataset", str(data), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "(1, 4, 4)" in err and "(1, 8, 8)" in err and len(err.strip().splitlines()) == 1
