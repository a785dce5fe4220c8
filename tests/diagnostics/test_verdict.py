"""fastgauss.verdict: the three-way regime read off printed evidence (DESIGN.md section 1, "Verdict")."""

import json
import math
import types

import pytest

import fastgauss
from fastgauss.diagnostics.verdict import MEMORIZATION_RATIO, RMSE_RATIO_MARGIN, Verdict

# The demo's two models with its defaults (README table; calibration in fastgauss/diagnostics/verdict.py).
SIGMAS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
MEMORIZING = dict(memorization_ratio=0.28, gl_score=0.21, gl_score_gaussian=0.58,
                  rmse_to_empirical=dict(zip(SIGMAS, (0.023, 0.034, 0.075, 0.152, 0.137, 0.065, 0.068))),
                  rmse_to_gaussian=dict(zip(SIGMAS, (0.064, 0.119, 0.222, 0.252, 0.164, 0.074, 0.070))))
GENERALIZING = dict(memorization_ratio=0.0, gl_score=0.38, gl_score_gaussian=0.53,
                    rmse_to_empirical=dict(zip(SIGMAS, (0.062, 0.103, 0.179, 0.177, 0.096, 0.054, 0.061))),
                    rmse_to_gaussian=dict(zip(SIGMAS, (0.049, 0.094, 0.174, 0.187, 0.124, 0.059, 0.063))))


def test_exported():
    assert not isinstance(fastgauss.verdict, types.ModuleType)  # the function, not the module
    assert callable(fastgauss.verdict) and fastgauss.Verdict is Verdict


def test_demo_models():
    mem, gen = fastgauss.verdict(**MEMORIZING), fastgauss.verdict(**GENERALIZING)
    assert mem.label == "memorizes" and "memorization ratio" in mem.rule
    assert gen.label == "generalizes"
    assert mem.rmse_ratio == pytest.approx((0.023 + 0.034 + 0.075 + 0.152) / (0.064 + 0.119 + 0.222 + 0.252))
    assert mem.sigmas_low == (0.1, 0.2, 0.5, 1.0)
    # the margin separates the two models by a factor of more than 1.4 on each side
    assert mem.rmse_ratio * 1.4 < RMSE_RATIO_MARGIN < gen.rmse_ratio / 1.4


def test_distance_rule_alone_fires():
    v = fastgauss.verdict(**{**MEMORIZING, "memorization_ratio": 0.0})
    assert v.label == "memorizes" and "RMSE ratio" in v.rule


def test_undertrained():
    # a 100-step model: far from both references, samples farther from the data than the Gaussian's
    v = fastgauss.verdict(memorization_ratio=0.0, gl_score=0.71, gl_score_gaussian=0.53,
                          rmse_to_empirical={0.5: 0.57, 1.0: 0.58}, rmse_to_gaussian={0.5: 0.56, 1.0: 0.59})
    assert v.label == "undertrained" and "0.710 > 0.530" in v.rule


def test_rule_order_and_boundaries():
    assert fastgauss.verdict(memorization_ratio=MEMORIZATION_RATIO).label == "memorizes"
    assert fastgauss.verdict(memorization_ratio=math.nextafter(MEMORIZATION_RATIO, 0)).label == "generalizes"
    # memorizing beats undertrained: a copying model whose other samples are noise
    assert fastgauss.verdict(memorization_ratio=0.5, gl_score=0.9, gl_score_gaussian=0.5).label == "memorizes"
    assert fastgauss.verdict(gl_score=0.5, gl_score_gaussian=0.5).label == "generalizes"  # equal: not farther
    # levels above sigma_max do not count
    v = fastgauss.verdict(rmse_to_empirical={2.0: 0.01, 1.0: 0.2}, rmse_to_gaussian={2.0: 1.0, 1.0: 0.2})
    assert v.label == "generalizes" and v.sigmas_low == (1.0,) and v.rmse_ratio == 1.0


def test_missing_evidence_is_stated():
    v = fastgauss.verdict(memorization_ratio=float("nan"), gl_score=0.3, gl_score_gaussian=0.5)
    assert v.label == "generalizes" and v.memorization_ratio is None
    assert "not measured: memorization ratio, RMSE" in v.rule
    assert "not measured" in str(v)


def test_report_prints_evidence():
    v = fastgauss.verdict(**MEMORIZING)
    text = str(v)
    assert text.startswith("memorizes: ")
    for needle in ("0.280", "0.210", "0.580", "0.43", f"{RMSE_RATIO_MARGIN:g}", "N(mu, Sigma)"):
        assert needle in text, needle
    d = v.to_dict()
    assert d["label"] == "memorizes" and d["gl_score_gaussian"] == 0.58 and d["margin"] == RMSE_RATIO_MARGIN
    json.dumps(d)  # JSON-ready
    with pytest.raises(Exception):
        v.label = "generalizes"  # frozen


@pytest.mark.parametrize("kwargs, name", [
    (dict(), "no evidence"),
    (dict(memorization_ratio=1.5), "memorization_ratio"),
    (dict(memorization_ratio=-0.1), "memorization_ratio"),
    (dict(gl_score=-1.0, gl_score_gaussian=0.5), "gl_score"),
    (dict(gl_score=float("inf"), gl_score_gaussian=0.5), "gl_score"),
    (dict(rmse_to_empirical={0.5: float("nan")}, rmse_to_gaussian={0.5: 0.1}), "rmse_to_empirical"),
    (dict(rmse_to_empirical={-0.5: 0.1}, rmse_to_gaussian={0.5: 0.1}), "rmse_to_empirical"),
    (dict(memorization_ratio=0.0, margin=0), "margin"),
    (dict(memorization_ratio=0.0, memorization_threshold=0), "memorization_threshold"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        fastgauss.verdict(**kwargs)


def test_types():
    with pytest.raises(TypeError, match="rmse_to_gaussian"):
        fastgauss.verdict(rmse_to_empirical={0.5: 0.1}, rmse_to_gaussian=[0.1])
    with pytest.raises(TypeError, match="memorization_ratio"):
        fastgauss.verdict(memorization_ratio="0.2")
    with pytest.raises(TypeError):
        fastgauss.verdict(0.2)  # keyword-only


def test_docstring_example():
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module("fastgauss.diagnostics.verdict"))
    assert result.failed == 0 and result.attempted >= 3
