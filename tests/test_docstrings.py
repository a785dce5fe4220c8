"""The examples in the public docstrings run as written."""

import doctest
import importlib

import pytest

MODULES = ["fastgauss.ops.moments.op", "fastgauss.ops.gaussian.op", "fastgauss.ops.gaussian.module", "fastgauss.ops.empirical.op", "fastgauss.ops.empirical.module",
           "fastgauss.ops.neighbors.op", "fastgauss.diagnostics.jvp", "fastgauss.data", "fastgauss.data.load",
           "fastgauss.edm.teleport", "fastgauss.diagnostics.linearity", "fastgauss.diagnostics.distill",
           "fastgauss.diagnostics.jacobian", "fastgauss._core.seeds",
           "fastgauss.edm.sampling"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no examples"
