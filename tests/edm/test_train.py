"""The reference training loop: steps, resume, checkpoints, measurements."""

import json

import pytest
import torch

import fastgauss.edm.train as train_module
from fastgauss.data import load_dataset
from fastgauss.edm.train import TrainConfig, Trainer, load_checkpoint


def _config(tmp_path, **overrides):
    base = dict(dataset="digits", n=64, width=8, steps=6, batch_size=16, warmup=2, eval_every=3,
                eval_sigmas=(0.5, 5.0), eval_samples=8, out=str(tmp_path / "run"))
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, digits):
    whole = Trainer(_config(tmp_path / "a"), digits)
    whole.run(progress=False, measure=False)
    first = Trainer(_config(tmp_path / "b"), digits)
    first.run(steps=3, progress=False, measure=False)  # "interrupted" after its checkpoint at step 3
    resumed = Trainer.resume(tmp_path / "b" / "run" / "checkpoint.pt", _config(tmp_path / "b"), digits)
    assert resumed.step == 3
    resumed.run(progress=False, measure=False)
    for key, value in _weights(whole).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in whole.ema.model.state_dict().items():
        assert torch.equal(value, resumed.ema.model.state_dict()[key]), key


def test_checkpoint_errors_are_clear(tmp_path, digits):
    trainer = Trainer(_config(tmp_path), digits)
    trainer.run(steps=3, progress=False, measure=False)
    path = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(ValueError, match="width=8.*width=16"):
        Trainer.resume(path, _config(tmp_path, width=16), digits)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a crash mid-copy, a disk error
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits, monkeypatch):
    trainer = Trainer(_config(tmp_path), digits)
    trainer.run(steps=3, progress=False, measure=False)
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(train_module, "edm_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="step 3.*checkpoint.pt"):
        trainer.run(progress=False, measure=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good
    assert trainer.step == 3


def test_measurements_are_logged(tmp_path, digits):
    trainer = Trainer(_config(tmp_path), digits)
    records = trainer.run(progress=False)
    assert [r["step"] for r in records] == [3, 6]
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lines == records
    for key in ("rmse_gaussian", "rmse_empirical", "linearity"):
        assert len(records[-1][key]) == 2 and all(v == v for v in records[-1][key])
    assert 0 <= records[-1]["memorization_ratio"] <= 1 and records[-1]["gl_score"] > 0
    with pytest.raises(ValueError, match="asked for 5000 samples"):
        Trainer(_config(tmp_path, n=5000), digits)
