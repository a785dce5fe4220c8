"""One vocabulary (issue 15 part 2): one noise-level rule, one precision check, one dtype promotion,
one log-sum-exp rescale and one probe-shape parser, each reached from every old call path with
the same error format."""

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import fastgauss
import fastgauss.reference as ref
from fastgauss.edm import EDMDenoiser
from fastgauss._core.arrays import probe_stack
from fastgauss._core.dtypes import compute_dtype
from fastgauss._core.precision import EMPIRICAL, GAUSSIAN, MOMENTS, UNIT_ROUNDOFF, check_precision
from fastgauss._core.sigma import level_list, per_sample
from fastgauss.ops.empirical import _torch as et

D = 6


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _data(n=40, d=D):
    return torch.randn(n, d, generator=_gen(1), dtype=torch.float64)


def _gaussian():
    return fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(_data()))


class _Net(nn.Module):
    """A tiny EDM network: F(x, c_noise) linear in x."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)

    def forward(self, x, c_noise):
        return self.lin(x) + c_noise[:, None]


# ---------------------------------------------------------------- the noise-level rule

@pytest.mark.parametrize("sigma", [0.5, 2, torch.tensor(0.5), np.float64(0.5), np.array(0.5), torch.tensor([0.5])])
def test_per_sample_broadcasts_one_level(sigma):
    s = per_sample(sigma, 3, dtype=torch.float64)
    assert s.shape == (3,) and s.dtype == torch.float64 and s.is_contiguous()
    assert torch.equal(s, torch.full((3,), float(np.asarray(sigma).reshape(-1)[0]), dtype=torch.float64))


def test_per_sample_keeps_values_order_and_gradient():
    raw = torch.rand(4, generator=_gen(2), dtype=torch.float64) + 0.1
    raw.requires_grad_(True)
    s = per_sample(raw, 4, dtype=torch.float32)
    assert s.dtype == torch.float32 and torch.equal(s.detach(), raw.detach().float())
    s.sum().backward()
    assert torch.equal(raw.grad, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("bad, positive, got", [
    (-1.0, False, "-1"), (float("nan"), False, "nan"), (float("inf"), False, "inf"), (0.0, True, "0"),
    (torch.tensor([0.5, -2.0, 1.0]), False, "-2"), (torch.tensor([0.5, float("nan"), -3.0]), True, "nan"),
    (1e39, False, "inf"),  # finite in float64, not in the float32 it is computed in
])
def test_per_sample_value_errors_have_one_format(bad, positive, got):
    batch = bad.numel() if isinstance(bad, torch.Tensor) else 3
    cmp = ">" if positive else ">="
    with pytest.raises(ValueError, match=rf"^sigma: expected finite noise levels {cmp} 0, got {got}$"):
        per_sample(bad, batch, dtype=torch.float32, positive=positive)


def test_per_sample_zero_is_allowed_only_where_asked():
    assert torch.equal(per_sample(0.0, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="> 0, got 0; why"):
        per_sample(0.0, 2, positive=True, hint="; why")


@pytest.mark.parametrize("bad", [torch.ones(3, 1), torch.ones(2), torch.ones(1, 3), torch.ones(4)])
def test_per_sample_shape_errors(bad):
    with pytest.raises(ValueError, match=r"^sigma: expected a float, a 0-d tensor or 3 values \(one per sample\), "
                                         rf"got shape {re.escape(str(tuple(bad.shape)))}$"):
        per_sample(bad, 3)


@pytest.mark.parametrize("bad, kind", [(True, TypeError), ([0.5, 0.5], TypeError), ("0.5", TypeError),
                                       (torch.tensor([True, False]), TypeError)])
def test_per_sample_type_errors_name_sigma(bad, kind):
    with pytest.raises(kind, match=r"^noise: "):
        per_sample(bad, 2, name="noise")


def test_level_list():
    assert level_list(0.5).tolist() == [0.5]
    assert level_list([2, 0.1, 2]).tolist() == [2.0, 0.1, 2.0]  # order and repeats kept
    grid = level_list(np.array([0.3, 0.7], dtype=np.float32))
    assert grid.dtype == torch.float64 and grid.device.type == "cpu"
    assert torch.equal(grid, torch.tensor([0.3, 0.7], dtype=torch.float32).double())
    for bad, message in (([], "at least one noise level, got none"), ([0.5, 0.0], "finite noise levels > 0, got 0"),
                         ([0.5, -1], "finite noise levels > 0, got -1"), ((0.5, math.nan), "finite noise levels > 0, got nan"),
                         (torch.ones(2, 2), "a 1-D list of noise levels, got shape \\(2, 2\\)")):
        with pytest.raises(ValueError, match=rf"^sigmas: expected {message}"):
            level_list(bad)
    for bad in ([0.5, "1"], [True], [0.5, None]):
        with pytest.raises(TypeError, match=r"^sigmas: expected numbers"):
            level_list(bad)


# Every old path that took a noise level, with what it allows at 0.
def _paths():
    data = _data()
    x = torch.randn(3, D, generator=_gen(3), dtype=torch.float64)
    g = _gaussian()
    emp = fastgauss.EmpiricalDenoiser(data)
    edm = EDMDenoiser(_Net().double())
    score = fastgauss.from_score(lambda x, s: -x / (1 + s[:, None] ** 2), kind="ve", sigma_min=0.01, sigma_max=50)
    fit = fastgauss.distill_linear(g, data, [0.5, 2.0], generator=_gen(4))
    v = torch.randn(3, D, generator=_gen(5), dtype=torch.float64)
    return {
        "gaussian_denoise": (lambda s: fastgauss.gaussian_denoise(x, s, mean=g.mean, eigvecs=g.eigvecs,
                                                                  eigvals=g.eigvals), False),
        "GaussianDenoiser": (lambda s: g(x, s), False),
        "GaussianDenoiser.jvp": (lambda s: g.jvp(x, s, v), False),
        "GaussianDenoiser.weights": (lambda s: g.weights(s), False),
        "empirical_denoise": (lambda s: fastgauss.empirical_denoise(x, s, data), True),
        "EmpiricalDenoiser": (lambda s: emp(x, s), True),
        "EmpiricalDenoiser.score": (lambda s: emp.score(x, s), True),
        "EmpiricalDenoiser.jvp": (lambda s: emp.jvp(x, s, v), True),
        "EDMDenoiser": (lambda s: edm(x, s), True),
        "model adapter": (lambda s: score(x, s), True),
        "LinearDistillation": (lambda s: fit(x, s), True),
    }


PATHS = list(_paths())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "zero"])
def test_every_sigma_path_gives_the_one_message(path, bad):
    call, positive = _paths()[path]
    if bad == "zero":
        if not positive:  # the Gaussian denoiser allows 0: D is the projection onto its subspace
            out = call(0.0)
            assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))
            return
        bad = 0.0
    got = "nan" if math.isnan(bad) else f"{bad:g}"
    cmp = ">" if positive else ">="
    with pytest.raises(ValueError, match=rf"^sigma: expected finite noise levels {cmp} 0, got {got}"):
        call(bad)
    with pytest.raises(ValueError, match=rf"^sigma: expected finite noise levels {cmp} 0, got {got}"):
        call(torch.tensor([0.7, bad, 0.9], dtype=torch.float64))  # one per sample, the bad one in the middle


@pytest.mark.parametrize("path", [p for p in PATHS if p != "GaussianDenoiser.weights"])
def test_every_per_sample_path_gives_the_one_shape_message(path):
    call, _ = _paths()[path]
    with pytest.raises(ValueError, match=r"^sigma: expected a float, a 0-d tensor or 3 values \(one per sample\)"
                                         r".*got shape \(4,\)$"):
        call(torch.full((4,), 0.5, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"^sigma: "):
        call(True)


def test_sigma_paths_still_compute_what_they_did():
    g = _gaussian()
    x = torch.randn(5, D, generator=_gen(6), dtype=torch.float64)
    s = torch.rand(5, generator=_gen(7), dtype=torch.float64) + 0.1
    want = ref.gaussian_denoiser(x, s, mean=g.mean, eigvals=g.eigvals, eigvecs=g.eigvecs, lam_rest=float(g.lam_rest))
    assert torch.allclose(g(x, s), want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(g(x, s[:1]), g(x, float(s[0])), rtol=0, atol=0)  # [1] is one level for all
    assert g(x, torch.stack([s, 2 * s], 1)).shape == (2, 5, D)  # the Gaussian's grid [B, T] stays
    emp_want = ref.empirical_denoiser(x, s, _data())
    assert torch.allclose(fastgauss.empirical_denoise(x, s, _data()), emp_want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("call", ["linearity_score", "denoiser_rmse", "distill_linear", "sigma_grid"])
def test_every_grid_of_levels_gives_the_one_message(call):
    from fastgauss.analysis.run import sigma_grid

    data, g = _data(), _gaussian()
    run = {"linearity_score": lambda s: fastgauss.linearity_score(g, data, s, n=4),
           "denoiser_rmse": lambda s: fastgauss.denoiser_rmse(g, g, data, s, n=4),
           "distill_linear": lambda s: fastgauss.distill_linear(g, data, s),
           "sigma_grid": lambda s: sigma_grid(0.001, 100.0, s)}[call]
    for bad, got in (([0.5, 0.0], "0"), ([-1.0], "-1"), ([math.inf], "inf")):
        with pytest.raises(ValueError, match=rf"^sigmas: expected finite noise levels > 0, got {got}$"):
            run(bad)
    with pytest.raises(ValueError, match=r"^sigmas: expected at least one noise level"):
        run([])


@pytest.mark.parametrize("text, got", [("0.5,-1", "-1"), ("nan", "nan"), ("0", "0")])
def test_cli_noise_levels_are_one_line_exit_2(text, got, capsys):
    from fastgauss.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["analyze", "no-model", "--dataset", "digits", "--sigmas", text])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"argument --sigmas: expected finite noise levels > 0, got {got}" in err


# ---------------------------------------------------------------- precision

def test_families_accept_what_they_did():
    assert fastgauss.ops.moments.PRECISIONS == MOMENTS == ("ieee", "tf32x3", "tf32")
    assert fastgauss.ops.gaussian.PRECISIONS == GAUSSIAN == ("ieee", "tf32", "bf16")
    assert fastgauss.ops.empirical.PRECISIONS == EMPIRICAL == ("ieee", "tf32", "bf16", "auto")
    from fastgauss.ops.empirical.precision import _UNIT_ROUNDOFF
    from fastgauss.ops.moments.products import PRODUCT_ROUNDING

    assert PRODUCT_ROUNDING == {"float64": 2.0**-53, "float32": 2.0**-24, "tf32x3": 2.0**-21, "tf32": 2.0**-11,
                                "bf16": 2.0**-8}
    assert _UNIT_ROUNDOFF == {"bf16": 2.0**-8, "tf32": 2.0**-11, "ieee": 2.0**-24, "float64": 2.0**-53}
    assert UNIT_ROUNDOFF["ieee"] == 2.0**-24


def _precision_paths():
    data = _data()
    x = torch.randn(3, D, generator=_gen(8))
    g = _gaussian()
    g32 = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data.float()))
    from fastgauss.analysis.stats_cache import cached_stats

    return {
        "moments": (lambda p: fastgauss.Moments(precision=p), MOMENTS),
        "moments (cached_stats)": (lambda p: cached_stats(data, precision=p, progress=False), MOMENTS),
        "the Gaussian denoiser": (lambda p: fastgauss.gaussian_denoise(x, 0.5, mean=g32.mean, eigvecs=g32.eigvecs,
                                                                       eigvals=g32.eigvals, precision=p), GAUSSIAN),
        "the Gaussian denoiser (module)": (lambda p: g(x.double(), torch.rand(3, dtype=torch.float64), precision=p),
                                           GAUSSIAN),
        "the Gaussian denoiser (operator route)": (lambda p: g(x.double(), 0.5, precision=p), GAUSSIAN),
        "the empirical denoiser": (lambda p: fastgauss.empirical_denoise(x, 0.5, data, precision=p), EMPIRICAL),
        "the empirical denoiser (module)": (lambda p: fastgauss.EmpiricalDenoiser(data, precision=p), EMPIRICAL),
        "the empirical denoiser (call)": (lambda p: fastgauss.EmpiricalDenoiser(data)(x, 0.5, precision=p),
                                          EMPIRICAL),
    }


@pytest.mark.parametrize("path", list(_precision_paths()))
@pytest.mark.parametrize("bad", ["fp8", "IEEE", 3])
def test_every_precision_path_gives_the_one_message(path, bad):
    call, accepted = _precision_paths()[path]
    family = path.split(" (")[0]
    want = rf"^precision: expected one of {', '.join(accepted)} for {family}, got {re.escape(repr(bad))}$"
    with pytest.raises(ValueError, match=want):
        call(bad)


def test_a_name_one_family_lacks_is_refused_by_it():
    g = _gaussian()
    x = torch.randn(2, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^precision: expected one of ieee, tf32, bf16 for the Gaussian denoiser, "
                                         r"got 'tf32x3'$"):
        g(x, 0.5, precision="tf32x3")
    with pytest.raises(ValueError, match=r"for moments, got 'bf16'$"):
        fastgauss.Moments(precision="bf16")
    assert check_precision("auto", EMPIRICAL, "x") == "auto"


# ---------------------------------------------------------------- dtype promotion

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.uint8]


@pytest.mark.parametrize("a", DTYPES)
@pytest.mark.parametrize("b", DTYPES)
def test_compute_dtype_is_the_old_rule(a, b):
    old = torch.promote_types(a, b)
    old = old if old in (torch.float32, torch.float64) else torch.float32
    assert compute_dtype(a, b) == old
    assert compute_dtype(a) == (torch.float64 if a == torch.float64 else torch.float32)
    assert compute_dtype(a, b, torch.float64) == torch.float64


def test_promoted_paths_keep_their_dtypes():
    g = _gaussian()  # float64 buffers
    x16 = torch.randn(3, D, generator=_gen(9)).half()
    out = g(x16, 0.5)
    assert out.dtype == torch.float16  # computed in float64 (x promoted with the buffers), returned as x
    edm_like = fastgauss.from_score(lambda x, s: -x, kind="ve", sigma_min=0.01, sigma_max=50)
    assert edm_like(x16, 0.5).dtype == torch.float32 and edm_like(x16.double(), 0.5).dtype == torch.float64


# ---------------------------------------------------------------- log-sum-exp merge

def test_rescale_and_reference():
    m_old = torch.tensor([float("-inf"), 1.0, -3.0, float("-inf")], dtype=torch.float64)
    m_new = torch.tensor([2.0, 4.0, -3.0, float("-inf")], dtype=torch.float64)
    assert torch.equal(et.rescale(m_old, m_new), torch.tensor([0.0, math.exp(-3.0), 1.0, 0.0], dtype=torch.float64))
    assert torch.equal(et.reference(m_old), torch.tensor([0.0, 1.0, -3.0, 0.0], dtype=torch.float64))


def test_split_merge_equals_one_pass():
    """Two partials over disjoint rows merge (rescale) to the partial of all rows."""
    x = torch.randn(5, D, generator=_gen(10), dtype=torch.float64)
    data = torch.randn(50, D, generator=_gen(11), dtype=torch.float64)
    sigma = torch.full((5,), 0.8, dtype=torch.float64)
    probes = torch.randn(2, 5, D, generator=_gen(12), dtype=torch.float64)

    def part(rows):
        z, s = et.chunk_logits(x, 1 / sigma**2, rows, rows.pow(2).sum(1))
        return et.chunk_partial(s, z, rows, probes, sigma_grad=True)

    whole = et.finish(part(data), sigma, probes)
    split = et.finish(part(data[:13]).merged(part(data[13:]), probes), sigma, probes)
    empty = et.Partial.empty(5, D, probes=2, sigma_grad=True, dtype=torch.float64, device="cpu")
    merged_empty = et.finish(empty.merge_(part(data), probes), sigma, probes)
    assert torch.allclose(whole[0], ref.empirical_denoiser(x, sigma, data), rtol=1e-10, atol=1e-12)
    for a, b, c in zip(whole, split, merged_empty):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12) and torch.allclose(a, c, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- probes

def test_probe_stack():
    x = torch.zeros(3, 2, 2)
    v, stacked = probe_stack(torch.ones(3, 2, 2, dtype=torch.int16), x)
    assert not stacked and v.dtype == torch.float32
    assert probe_stack(torch.ones(4, 3, 2, 2), x)[1]
    with pytest.raises(ValueError, match=r"^w: expected shape \(3, 2, 2\) or \[K, 3, 2, 2\], got \(3, 4\)$"):
        probe_stack(torch.ones(3, 4), x, "w")


@pytest.mark.parametrize("who", ["fastgauss.jvp", "GaussianDenoiser.jvp", "EmpiricalDenoiser.jvp"])
def test_every_jvp_gives_the_one_probe_message(who):
    data = _data()
    x = torch.randn(3, D, generator=_gen(13), dtype=torch.float64)
    call = {"fastgauss.jvp": lambda v: fastgauss.jvp(lambda x, s: 2 * x, x, 0.5, v),
            "GaussianDenoiser.jvp": lambda v: _gaussian().jvp(x, 0.5, v),
            "EmpiricalDenoiser.jvp": lambda v: fastgauss.EmpiricalDenoiser(data).jvp(x, 0.5, v)}[who]
    with pytest.raises(ValueError, match=rf"^v: expected shape \(3, {D}\) or \[K, 3, {D}\], got \(2, {D}\)$"):
        call(torch.ones(2, D, dtype=torch.float64))
    v = torch.randn(2, 3, D, generator=_gen(14), dtype=torch.float64)
    _, jv = call(v)
    assert jv.shape == v.shape


# ---------------------------------------------------------------- one name for a count

def test_linearity_score_takes_n():
    g, data = _gaussian(), _data()
    table = fastgauss.linearity_score(g, data, [0.5], n=10, generator=_gen(15))
    assert table.value.shape == (1,)
    with pytest.raises(TypeError, match="n_pairs"):
        fastgauss.linearity_score(g, data, [0.5], n_pairs=10)
    with pytest.raises(ValueError, match=r"^n: 21 pairs need 42 distinct samples, data has 40$"):
        fastgauss.linearity_score(g, data, [0.5], n=21)


# ---------------------------------------------------------------- the training commands' shared options

def test_training_commands_share_their_run_options():
    from fastgauss.cli.app import build_parser

    parser = build_parser()
    for argv, out in ((["demo"], "fastgauss-out/demo"), (["reproduce"], "fastgauss-out/reproduce"), (["train"], None)):
        args = parser.parse_args([*argv, "--quiet", "--device", "cpu"])
        assert args.quiet and args.device == "cpu" and args.out == out
        assert getattr(args, "samples", None) == (None if argv == ["train"] else 64)


# ---------------------------------------------------------------- the modules' own examples

@pytest.mark.parametrize("name", ["fastgauss._core.sigma", "fastgauss._core.precision", "fastgauss._core.dtypes"])
def test_core_vocabulary_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
