"""The built wheel holds every package and module of the source tree (the editable install used by
the other tests would hide one that packaging leaves out), and each subpackage imports from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "fastgauss", "kernels")


def _source_modules() -> set[str]:
    """Installed names of every .py file in fastgauss/ and kernels/ (kernels/ is fastgauss.kernels)."""
    names = set()
    for top, prefix in (("fastgauss", "fastgauss"), ("kernels", "fastgauss/kernels")):
        for path in (REPO / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                names.add(f"{prefix}/{path.relative_to(REPO / top).as_posix()}")
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so the build leaves nothing (build/, egg-info) in the checkout
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (built,) = (root / "dist").glob("fastgauss-*.whl")
    return built


def test_wheel_holds_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_modules() - names)
    assert not missing, f"left out of the wheel: {missing}"
    assert "fastgauss/models/__init__.py" in names and "fastgauss/kernels/__init__.py" in names
    assert not any(n.startswith(("tests/", "kernels/", "benchmarks/", "examples/")) for n in names)


def test_every_subpackage_imports_from_the_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    packages = sorted(str(p.parent.relative_to(site)).replace(os.sep, ".") for p in site.rglob("__init__.py"))
    assert {"fastgauss", "fastgauss.kernels", "fastgauss.models"} <= set(packages)
    code = (
        "import importlib, sys\n"
        f"site = {str(site)!r}\n"
        f"for name in {packages!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
        "import fastgauss\n"
        "assert callable(fastgauss.load_denoiser) and callable(fastgauss.from_diffusers)\n"
        "print('imported', len(sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install's path entries
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("imported")
