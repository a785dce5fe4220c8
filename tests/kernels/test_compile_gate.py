"""The compile gate: every kernel, every launch configuration, sm_80 and sm_90, built on CPU.

The tests run with the interpreter on, which replaces every jitted kernel at import, so the
gate runs as its own process, exactly as `python -m fastgauss.kernels.check` does.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gate


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    out = tmp_path_factory.mktemp("gate") / "gate.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "fastgauss.kernels.check", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
    return proc, json.loads(out.read_text()) if out.exists() else []


def test_every_kernel_compiles_without_spills_within_shared_memory(gate):
    proc, results = gate
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("compile gate: triton "), proc.stdout[:200]
    assert results, "the gate found no kernels"
    assert {r["arch"] for r in results} == {80, 90}
    assert all(not r["failures"] and r["registers"] > 0 for r in results)


def test_tensor_core_modes_use_matrix_instructions(gate):
    _, results = gate
    for r in results:
        if "tf32" in r["kernel"] or "bf16" in r["kernel"]:
            assert ("HGMMA" if r["arch"] == 90 else "HMMA") in r["mma"], r
        else:
            assert r["mma"] == "FFMA", r  # exact fp32 products stay off the tensor cores


def test_gate_refuses_to_run_under_the_interpreter():
    from fastgauss.kernels import check

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        check.run_gate()


@pytest.mark.parametrize("mma,expect_mma,arch,ok", [
    ("HGMMA", True, 90, True), ("HMMA", True, 90, False), ("HMMA", True, 80, True), ("FFMA", True, 80, False),
    ("FFMA", False, 90, True), ("HMMA", False, 80, False), ("", False, 80, False), ("", True, 90, False),
])
def test_gate_instruction_rule(mma, expect_mma, arch, ok):
    from fastgauss.kernels import check

    problem = check.instruction_problem(mma, expect_mma, arch)
    assert (problem == "") == ok, problem
