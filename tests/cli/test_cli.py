"""The fastgauss command line."""

import json

import pytest

import numpy as np
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.cli import main
from fastgauss.data import load_dataset
from helpers import rel_err


def test_stats_on_bundled_digits_writes_moments_and_eigenpairs(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    assert main(["stats", "digits", "--out", str(out), "--batch-size", "500", "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "1797 samples" in printed and "d = 64" in printed
    assert "components for 99.0% of the variance" in printed
    saved = torch.load(out)
    x = load_dataset("digits").reshape(1797, -1)
    assert saved["count"] == 1797 and saved["feature_shape"] == (1, 8, 8)
    assert rel_err(saved["mean"], ref.mean(x)) < 1e-7
    assert rel_err(saved["covariance"], ref.covariance(x)) < 1e-6
    vals, vecs = saved["eigvals"], saved["eigvecs"]
    assert torch.all(vals[:-1] >= vals[1:])
    assert rel_err(vecs @ torch.diag(vals) @ vecs.T, ref.covariance(x)) < 1e-6
    assert (tmp_path / "digits.png").stat().st_size > 1000


def test_stats_on_npy_with_rank_and_ddof(tmp_path, capsys):
    arr = np.random.default_rng(0).uniform(-1, 1, (300, 12)).astype(np.float32)
    np.save(tmp_path / "vectors.npy", arr)
    out = tmp_path / "v.pt"
    assert main(["stats", str(tmp_path / "vectors.npy"), "--out", str(out), "--rank", "3", "--ddof", "1",
                 "--quiet", "--no-plot", "--device", "cpu"]) == 0
    saved = torch.load(out)
    assert saved["eigvecs"].shape == (12, 3)
    assert rel_err(saved["covariance"], ref.covariance(torch.from_numpy(arr), ddof=1)) < 1e-6


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["stats", "no-such-dataset", "--quiet"]) == 2
    assert "digits, faces, patches" in capsys.readouterr().err


def test_train_command_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--n", "40", "--width", "8", "--steps", "4", "--batch-size", "8",
            "--eval-every", "2", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    assert "memorization ratio" in capsys.readouterr().out
    assert (out / "curve.png").stat().st_size > 1000  # a curve of its measurements
    assert main([*args[:8], "6", *args[9:], "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # steps 2, 4, then 6
    assert main([*args[:6], "16", *args[7:], "--resume"]) == 2  # another width: a clear error
    assert "width=8" in capsys.readouterr().err


def test_demo_runs_end_to_end_in_a_reduced_mode(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "20", "--width", "8", "--small-n", "32", "--samples", "16", "--out", str(out),
                 "--quiet"]) == 0
    assert "summary.md" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"memorizing", "generalizing"}
    assert summary["models"]["memorizing"]["n"] == 32 and summary["models"]["generalizing"]["n"] == 1797
    for m in summary["models"].values():
        assert len(m["rmse_gaussian"]) == len(m["sigma"]) == len(m["linearity"])
        assert m["verdict"]["label"] in ("memorizes", "undertrained", "generalizes")
        assert m["verdict"]["gl_score_gaussian"] == m["gl_score_gaussian"] > 0
    report = (out / "summary.md").read_text()
    assert "above 0.6" not in report and "Verdict:" in report and "fresh N(mu, Sigma) samples" in report
    for term in ("GL score", "memorization ratio", "RMSE ratio", "linearity", "verdict"):
        assert f"**{term}" in report, term  # each number the report prints is defined in it
    for name in ("summary.md", "distances.png", "samples.png"):
        assert (out / name).stat().st_size > 500, name


def test_train_under_torchrun_with_two_gloo_processes(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ddp"
    # torchrun's own parser would take an abbreviated "--n" for one of its options: --train-size
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", "29517", "-m", "fastgauss", "train", "--train-size", "32", "--width", "8", "--steps", "2",
           "--batch-size", "8", "--eval-every", "2", "--out", str(out), "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "checkpoint.pt").exists() and len((out / "log.jsonl").read_text().splitlines()) == 1
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("GL score") == 1  # only rank 0 prints


def test_reproduce_sweeps_and_reports_regimes(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["reproduce", "--sizes", "16,1797", "--widths", "8", "--steps", "4", "--samples", "8",
                 "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "sweep.json").read_text())
    assert [r["n"] for r in rows] == [16, 1797]
    assert all(r["regime"] in ("memorizes", "undertrained", "generalizes") for r in rows)
    for r in rows:  # the verdict is fastgauss.verdict of the evidence printed beside it
        rec = r["record"]
        again = fastgauss.verdict(memorization_ratio=rec["memorization_ratio"], gl_score=rec["gl_score"],
                                  gl_score_gaussian=rec["gl_score_gaussian"],
                                  rmse_to_empirical=dict(zip(rec["sigma"], rec["rmse_empirical"])),
                                  rmse_to_gaussian=dict(zip(rec["sigma"], rec["rmse_gaussian"])))
        assert r["verdict"] == again.to_dict() and r["regime"] == again.label
    printed = capsys.readouterr().out
    assert "| N | width | steps | verdict | memorization ratio" in printed and "GL score, N(mu, Sigma)" in printed
    assert "What the numbers mean" in printed and "rule" not in printed.split("Why each verdict")[0]
    assert (out / "sweep.png").stat().st_size > 1000
    with pytest.raises(SystemExit):  # argparse rejects the list, naming it
        main(["reproduce", "--sizes", "a,b", "--out", str(out)])
    assert "comma-separated integers" in capsys.readouterr().err
