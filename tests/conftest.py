"""Test harness: the Triton interpreter goes on before anything imports triton.

It also marks the tests that run Triton kernels (interpreted) with ``kernel``, so that
``pytest -m kernel`` runs the interpreter tests of every kernel family whatever file they
live in. A test is marked when it runs on the ``backend`` fixture's "triton" side, when its
module imports from ``fastgauss.kernels`` or defines a Triton kernel (and it is not the
"torch" side), or when it sets FASTGAUSS_BACKEND to "triton" itself. The marker is checked
while the tests run: a test that launches a kernel without it fails, naming the fix. With
FASTGAUSS_EXPECT_KERNEL_FAMILIES=1 the session also fails unless every family in
``fastgauss.kernels.KERNEL_MODULES`` launched at least once.
"""

import inspect
import os
import re

os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("quick", max_examples=5, deadline=None,  # CI's second pass (Triton 3.6)
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Runs a test once on the PyTorch path and once on the Triton kernels (interpreted on CPU)."""
    monkeypatch.setenv("FASTGAUSS_BACKEND", request.param)
    return request.param


# ---- the ``kernel`` marker ---------------------------------------------------------------

_FORCES_TRITON = re.compile(r"""FASTGAUSS_BACKEND['"]\s*,\s*['"]triton['"]""")


def _is_kernel_object(value) -> bool:
    name = getattr(value, "__name__", "") if inspect.ismodule(value) else getattr(value, "__module__", "") or ""
    return name.startswith("fastgauss.kernels") or type(value).__module__.startswith("triton.runtime")


def _runs_kernels(item) -> bool:
    callspec = getattr(item, "callspec", None)
    side = callspec.params.get("backend") if callspec is not None else None
    if side is not None:
        return side == "triton"
    module = getattr(item, "module", None)
    if module is not None and any(_is_kernel_object(v) for v in vars(module).values()):
        return True
    try:
        return bool(_FORCES_TRITON.search(inspect.getsource(item.function)))
    except (AttributeError, OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _runs_kernels(item):
            item.add_marker(pytest.mark.kernel)


_launched: dict[str, int] = {}  # kernel family -> launches, this session


def _family(module: str) -> str:
    """The kernel family of a jitted function's module: fastgauss.kernels.gaussian -> gaussian, and
    fastgauss.kernels._empirical_jit -> empirical (a family may keep its kernels in a private module)."""
    return module.rsplit(".", 1)[-1].lstrip("_").split("_")[0]


def _count_launches():
    """Wrap the interpreter's launch to count launches per kernel module (guarded: a Triton
    without this layout is simply not counted)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    run = getattr(InterpretedFunction, "run", None)
    if run is None or getattr(run, "_fastgauss_counted", False):
        return run is not None

    def counted(self, *args, **kwargs):
        family = _family(getattr(getattr(self, "fn", None), "__module__", "?"))
        _launched[family] = _launched.get(family, 0) + 1
        return run(self, *args, **kwargs)

    counted._fastgauss_counted = True
    InterpretedFunction.run = counted
    return True


_COUNTING = _count_launches()


@pytest.fixture(autouse=True)
def _kernel_marker_is_honest(request):
    before = sum(_launched.values())
    yield
    if _COUNTING and sum(_launched.values()) > before and request.node.get_closest_marker("kernel") is None:
        pytest.fail(f"{request.node.nodeid} launched a Triton kernel but is not marked 'kernel': "
                    "add @pytest.mark.kernel (or let tests/conftest.py's rule see it)", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("FASTGAUSS_EXPECT_KERNEL_FAMILIES", "") in ("", "0") or not _COUNTING:
        return
    from fastgauss.kernels import KERNEL_MODULES

    missing = [m for m in KERNEL_MODULES if not _launched.get(m)]
    if missing:
        print(f"\nFASTGAUSS_EXPECT_KERNEL_FAMILIES: no test launched a kernel of {', '.join(missing)}")
        session.exitstatus = 1
    else:
        print("\nkernel launches by family: " + ", ".join(
            f"{m} {_launched[m]}" for m in KERNEL_MODULES))
