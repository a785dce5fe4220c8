"""Test harness: the Triton interpreter goes on before anything imports triton."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Runs a test once on the PyTorch path and once on the Triton kernels (interpreted on CPU)."""
    monkeypatch.setenv("FASTGAUSS_BACKEND", request.param)
    return request.param
