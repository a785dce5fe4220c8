"""benchmarks/gpu_check.py runs end to end on CPU (interpreter, tiny sizes) and reports every check."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run_writes_results(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path),
                           "--smoke"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["all_passed"] and len(results["checks"]) >= 10
    names = {c["name"] for c in results["checks"]}
    assert {"moments covariance ieee", "moments covariance tf32x3", "moments covariance tf32"} <= names
    assert {f"gaussian denoise {p}" for p in ("ieee", "tf32", "bf16")} <= names
    assert (tmp_path / "table.txt").read_text().rstrip().endswith("0 failed")
