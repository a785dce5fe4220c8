"""The compile gate: every kernel, every launch configuration, sm_80 and sm_90, built on CPU."""

import pytest

from fastgauss.kernels import check


@pytest.fixture(scope="module")
def gate_results():
    return check.run_gate()


def test_every_kernel_compiles_without_spills_within_shared_memory(gate_results):
    assert gate_results, "the gate found no kernels"
    failed = [r for r in gate_results if r.failures]
    assert not failed, "\n" + check.format_table(gate_results)
    assert {r.arch for r in gate_results} == {80, 90}


def test_tensor_core_modes_use_matrix_instructions(gate_results):
    for r in gate_results:
        if "tf32" in r.kernel:
            assert ("HGMMA" if r.arch == 90 else "HMMA") in r.mma, r
        else:
            assert r.mma == "FFMA", r  # exact fp32 products stay off the tensor cores
