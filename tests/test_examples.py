"""The example scripts run end to end in their reduced (--quick) mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fastgauss

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_diffusers_digits_quick(tmp_path, capsys):
    pytest.importorskip("diffusers")
    example = _load("train_diffusers_digits")
    state = torch.random.get_rng_state()
    assert example.main(["--quick", "--steps", "3", "--n", "16", "--out", str(tmp_path / "run")]) == 0
    assert torch.equal(torch.random.get_rng_state(), state)  # the script leaves the global RNG alone
    printed = capsys.readouterr().out
    assert f"fastgauss analyze {tmp_path / 'run'} --dataset {tmp_path / 'run' / 'train_data.npy'}" in printed
    run = tmp_path / "run"
    assert (run / "model_index.json").is_file() and (run / "unet").is_dir() and (run / "scheduler").is_dir()
    data = np.load(run / "train_data.npy")
    assert data.shape == (16, 1, 8, 8) and np.array_equal(data, fastgauss.data.load_dataset("digits", limit=16).numpy())
    den = fastgauss.load_denoiser(run)
    assert den.feature_shape == (1, 8, 8) and den.prediction_type == "epsilon"
    assert torch.isfinite(den(torch.from_numpy(data), 0.5)).all()
    if hasattr(fastgauss, "analyze"):
        summary = json.loads((run / "report" / "summary.json").read_text())
        assert summary  # the analysis ran on the saved folder and wrote its report


def test_train_diffusers_digits_bad_flag(capsys):
    pytest.importorskip("diffusers")
    example = _load("train_diffusers_digits")
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--n", "5000"])
    assert exit_info.value.code == 2
    assert "--n: expected 2 to 1797 digits" in capsys.readouterr().err
