"""A user's mistake on the command line: one line naming the option, exit code 2, no traceback.

Each case runs the real command in a fresh process (``python -m fastgauss ...``) and fails
before any training starts, so the whole file takes a few seconds a case.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--width", "8", "--quiet", "--device", "cpu"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


# The driver imports fastgauss once, then forks one child per command line; each child runs
# ``python -m fastgauss ARGS`` as the interpreter would (runpy, an uncaught exception prints its
# traceback and exits 1) with its own stdout, stderr and exit code.
_DRIVER = r"""
import json, os, runpy, sys, tempfile, traceback
import fastgauss.cli  # the expensive imports, once
results = []
for argv, cwd in json.loads(sys.stdin.read()):
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.chdir(cwd)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = ["fastgauss", *argv]
        try:
            runpy.run_module("fastgauss", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    texts = []
    for f in (out, err):
        f.seek(0)
        texts.append(f.read().decode(errors="replace"))
    results.append([os.waitstatus_to_exitcode(status), *texts])
print(json.dumps(results))
"""


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_many(commands, timeout=600) -> list[Result]:
    """[(args, cwd)] -> one Result per command line, all from one interpreter (forked per command)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps([[list(a), str(c)] for a, c in commands]),
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=str(commands[0][1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [Result(*r) for r in json.loads(proc.stdout.splitlines()[-1])]


def run(args, cwd, timeout=300) -> Result:
    return run_many([(args, cwd)], timeout)[0]


def assert_usage_error(proc, *needles):
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


CASES = {
    # 1. silently wrong runs
    "train --n 0": (["train", "--n", "0", "--steps", "2"], ["--n", ">= 2"]),
    "train --n 99999": (["train", "--n", "99999", "--steps", "2"], ["--n 99999", "1797"]),
    "train --steps 0": (["train", "--steps", "0"], ["--steps", ">= 1"]),
    "train --steps -5": (["train", "--steps", "-5"], ["--steps", ">= 1"]),
    "demo --small-n 0": (["demo", "--small-n", "0", "--steps", "2"], ["--small-n", ">= 2"]),
    "demo --small-n 5000": (["demo", "--small-n", "5000", "--steps", "2"], ["--small-n 5000", "1797"]),
    "reproduce --sizes 99999": (["reproduce", "--sizes", "99999", "--steps", "2"], ["--sizes 99999", "1797"]),
    "reproduce --sizes ''": (["reproduce", "--sizes", "", "--steps", "2"], ["--sizes", "at least one"]),
    # 2. tracebacks / internal names
    "train --eval-every 0": (["train", "--eval-every", "0", "--steps", "2"], ["--eval-every"]),
    "demo --steps 0": (["demo", "--steps", "0"], ["--steps"]),
    "reproduce --steps 0": (["reproduce", "--steps", "0"], ["--steps"]),
    "demo --samples 0": (["demo", "--samples", "0", "--steps", "2"], ["--samples"]),
    "reproduce --samples 0": (["reproduce", "--samples", "0", "--steps", "2"], ["--samples"]),
    "reproduce --sizes 1": (["reproduce", "--sizes", "1", "--steps", "2"], ["--sizes", ">= 2"]),
    "train --lr -1": (["train", "--lr", "-1", "--steps", "2"], ["--lr", "> 0"]),
    "train --lr nan": (["train", "--lr", "nan", "--steps", "2"], ["--lr"]),
    "train --width 12": (["train", "--width", "12", "--steps", "2"], ["width", "multiple of 8"]),
    "train --device gpu": (["train", "--steps", "2", "--device", "gpu"], ["--device", "'gpu'"]),
    "stats --device bogus": (["stats", "digits", "--device", "bogus"], ["--device", "'bogus'"]),
    "demo --device gpu": (["demo", "--steps", "2", "--device", "gpu"], ["--device"]),
    "reproduce --device gpu": (["reproduce", "--steps", "2", "--device", "gpu"], ["--device"]),
    "stats --limit 0": (["stats", "digits", "--limit", "0"], ["--limit"]),
    "stats --rank 0": (["stats", "digits", "--rank", "0"], ["--rank"]),
    "stats --rank 65": (["stats", "digits", "--rank", "65", "--no-plot"], ["--rank 65", "d = 64"]),
    "stats --batch-size 0": (["stats", "digits", "--batch-size", "0"], ["--batch-size"]),
}


@pytest.fixture(scope="module")
def case_results(tmp_path_factory):
    """Every CASES command line, run once in one forked driver."""
    commands, folders = [], {}
    for case, (args, _) in CASES.items():
        folder = tmp_path_factory.mktemp("case")
        out = folder / "out"
        # defaults first: a value in the case (given later) wins
        extra = ["--out", str(out / "x.pt" if args[0] == "stats" else out), "--quiet", "--device", "cpu"]
        if args[0] != "stats":
            extra += ["--width", "8"]
        commands.append(([args[0], *extra, *args[1:]], folder))
        folders[case] = out
    return dict(zip(CASES, run_many(commands))), folders


@pytest.mark.parametrize("case", list(CASES))
def test_option_mistakes(case, case_results):
    results, folders = case_results
    assert_usage_error(results[case], *CASES[case][1])
    assert not (folders[case] / "checkpoint.pt").exists()


@NO_CUDA
def test_device_cuda_without_cuda(tmp_path):
    commands = [["stats", "digits"], ["train", "--steps", "2"], ["demo", "--steps", "2"], ["reproduce", "--steps", "2"]]
    results = run_many([([*c, "--device", "cuda", "--quiet", "--out", str(tmp_path / "o")], tmp_path) for c in commands])
    for command, proc in zip(commands, results):
        assert_usage_error(proc, "--device", "CUDA", "cpu")
    assert not (tmp_path / "o").exists()


@NO_CUDA
def test_moments_from_loader_cuda_without_cuda_is_a_value_error():
    import fastgauss

    with pytest.raises(ValueError, match="device.*CUDA"):
        fastgauss.Moments.from_loader([torch.zeros(2, 3)], device="cuda", progress=False)
    with pytest.raises(ValueError, match="device.*'gpu'"):
        fastgauss.Moments.from_loader([torch.zeros(2, 3)], device="gpu", progress=False)


def test_resume_without_a_checkpoint(tmp_path, out):
    proc = run(["train", "--steps", "2", "--resume", "--out", str(out), *SMALL], tmp_path)
    assert_usage_error(proc, "--resume", "no checkpoint", str(out / "checkpoint.pt"))


def test_resume_with_steps_already_done(tmp_path, out):
    args = ["train", "--n", "16", "--batch-size", "8", "--eval-every", "2", "--out", str(out), *SMALL]
    assert run([*args, "--steps", "2"], tmp_path).returncode == 0
    proc = run([*args, "--steps", "2", "--resume"], tmp_path)
    assert_usage_error(proc, "--steps 2", "already at step 2")


def test_divergence_before_the_first_checkpoint_names_lr_and_no_checkpoint(tmp_path, out):
    proc = run(["train", "--n", "16", "--batch-size", "8", "--steps", "50", "--eval-every", "50", "--lr", "1e6",
                "--out", str(out), *SMALL], tmp_path)
    assert_usage_error(proc, "non-finite loss", "no checkpoint has been written yet", "--lr")
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("scale, values", [(None, (0, 255)), (None, (0, 1.5)), ("0-1", (0, 255))])
def test_float_npy_out_of_range(tmp_path, scale, values):
    arr = np.random.default_rng(0).uniform(*values, (20, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    proc = run(["stats", str(tmp_path / "a.npy"), "--quiet", "--no-plot", "--device", "cpu", "--out",
                str(tmp_path / "a.pt"), *([] if scale is None else ["--scale", scale])], tmp_path)
    assert_usage_error(proc, "outside", f"{arr.min():.4g}", f"{arr.max():.4g}")
    if values[1] == 255:
        assert "--scale 0-255" in proc.stderr


def test_float_npy_with_scale_works(tmp_path):
    arr = np.random.default_rng(0).uniform(0, 255, (20, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    proc = run(["stats", str(tmp_path / "a.npy"), "--scale", "0-255", "--quiet", "--no-plot", "--device", "cpu",
                "--out", str(tmp_path / "a.pt")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = torch.load(tmp_path / "a.pt")
    expected = torch.from_numpy(arr.astype(np.float64) / 127.5 - 1).reshape(20, -1).mean(0)
    assert torch.allclose(saved["mean"], expected, atol=1e-6)


def test_help_shows_defaults_and_version(tmp_path):
    import fastgauss

    expected = (("train", "(default: 4000)"), ("demo", "(default: 64)"), ("reproduce", "(default: [64, 256, 1797])"),
                ("stats", "(default: 1024)"))
    results = run_many([([command, "--help"], tmp_path) for command, _ in expected] + [(["--version"], tmp_path)])
    for (command, needle), proc in zip(expected, results):
        text = " ".join(proc.stdout.split())  # argparse wraps lines
        assert proc.returncode == 0 and needle in text, (command, proc.stdout)
        assert "--device" in text, command
    assert results[-1].returncode == 0 and results[-1].stdout.strip() == f"fastgauss {fastgauss.__version__}"


def test_bad_option_value_is_one_line(tmp_path):
    proc = run(["reproduce", "--sizes", "a,b"], tmp_path)
    assert_usage_error(proc, "--sizes", "comma-separated integers")
