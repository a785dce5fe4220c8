"""The compile gate: every kernel, every launch configuration, sm_80 and sm_90, built on CPU (the
parser, occupancy and specialisation rules without compiling: tests/test_gate_facts.py).

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
        if r["expect_mma"]:
            assert ("HGMMA" if r["arch"] == 90 else "HMMA") in r["mma"], r
        else:
            assert r["mma"] == "FFMA", r  # exact fp32 products stay off the tensor cores


def test_jit_builds_carry_the_facts_of_each_target(gate):
    """Every family has sm_90 builds specialised like the JIT, with the SASS facts and the waves of
    each target; an aligned build loads 16 bytes at a time where the odd build cannot."""
    _, results = gate
    jit = [r for r in results if r["build"] == "jit"]
    assert {r["kernel"].split("[")[0] for r in jit} == {"gaussian_project", "gaussian_reconstruct", "centered_gram",
                                                        "empirical_dots", "empirical_softmax", "empirical_sums",
                                                        "nn_candidates"}
    for r in jit:
        assert r["arch"] == 90 and r["targets"] and r["ctas_per_sm"] >= 1 and r["main_loop"], r["kernel"]
        assert r["widest_global_load"] == 128, r["kernel"]
        for t in r["targets"]:
            assert t["ctas"] == eval("*".join(map(str, t["grid"]))) and 0 < t["wave_efficiency"] <= 1
        if r["expect_mma"]:
            assert r["hgmma"] and r["wait_depth"] is not None and r["a_source"], r
    odd = {r["kernel"]: r for r in results if r["build"] == "odd" and r["arch"] == 90}
    assert any(odd[r["kernel"]]["registers"] > r["registers"] for r in jit)


def test_ffma_jit_builds_carry_shared_memory_wavefronts(gate):
    """Every sm_90 jit build whose main loop is an FFMA dot has its operands' wavefronts, simulated
    from the TTGIR in agreement with the SASS (kernels/_smem.py); tensor-core builds and the softmax
    (FFMAs of elementwise math) have none."""
    _, results = gate
    jit = [r for r in results if r["build"] == "jit"]
    ffma = [r for r in jit if r["mma"] == "FFMA" and not r["kernel"].startswith("empirical_softmax")]
    assert {r["kernel"].split("[")[0] for r in ffma} >= {"gaussian_project", "gaussian_reconstruct", "centered_gram",
                                                         "empirical_dots", "empirical_sums", "nn_candidates"}
    for r in ffma:
        assert r["smem_consistent"] is True and set(r["smem_wavefronts"]) == {"A", "B"}, (r["kernel"], r["smem_note"])
        for op in r["smem_wavefronts"].values():
            assert op["bytes"] == op["accesses"] * op["width_bits"] // 8 * 32
            assert op["accesses"] <= op["wavefronts"] <= 32 * op["accesses"], r["kernel"]
    assert all(r["smem_consistent"] is None and not r["smem_wavefronts"] for r in jit if r not in ffma)


def _full_width(op: dict) -> int:
    """Wavefronts of an operand's accesses were every lane's word distinct and conflict-free: 32
    lanes x width / 128 bytes per access (a broadcast takes fewer, a bank conflict more)."""
    return op["accesses"] * max(1, op["width_bits"] * 32 // 8 // 128)


def test_launched_ffma_operands_read_the_banks_without_conflicts(gate):
    """Issue 14: the ieee builds as launched read their dot's B operand N-contiguous, so no load
    of it waits on a bank conflict (at most its full-width wavefronts; the K-major tiles of the
    code before took 4-8x that); the K-major reads kept for gpu_check's A/B (the 'before' Gaussian
    tiles, nn_candidates[ieee,direct]) still show the conflicts."""
    _, results = gate
    jit = {r["kernel"]: r for r in results if r["build"] == "jit" and r["arch"] == 90}
    launched = ["gaussian_project[large,ieee]", "gaussian_reconstruct[large,ieee]", "gaussian_project[small,ieee]",
                "empirical_dots[ieee]", "empirical_sums[ieee]", "empirical_dots[ieee,probes]", "nn_candidates[ieee]",
                "centered_gram[large,ieee,sym]"]
    for name in launched:
        b = jit[name]["smem_wavefronts"]["B"]
        assert b["wavefronts"] <= _full_width(b), (name, b)
    for name in ("gaussian_project[before-large,ieee]", "nn_candidates[ieee,direct]"):
        b = jit[name]["smem_wavefronts"]["B"]
        assert b["wavefronts"] >= 2 * _full_width(b), (name, b)


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
