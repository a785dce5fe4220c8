"""Empirical (memorizing) denoiser against the float64 reference, on both backends."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgauss
from fastgauss import reference as ref
from fastgauss.ops.empirical import precision as empirical_precision
from fastgauss.ops.empirical import stream as empirical_stream
from fastgauss.ops.empirical.precision import EXACT, choose_precision
from fastgauss.ops.empirical.training_set import TrainingSet
from helpers import rel_err

ODD = [1, 7, 63, 129]


@given(n=st.sampled_from(ODD + [1000]), d=st.sampled_from(ODD), batch=st.integers(1, 20),
       seed=st.integers(0, 2**31 - 1))
def test_matches_reference_across_sigmas(backend, n, d, batch, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(n, d, generator=g) * 2 - 1
    x = data[torch.randint(0, n, (batch,), generator=g)] + torch.randn(batch, d, generator=g) * 0.3
    sigma = torch.exp(torch.empty(batch).uniform_(-6.2, 4.4, generator=g))  # 0.002 .. 80
    got = fastgauss.empirical_denoise(x, sigma, data)
    expected = ref.empirical_denoiser(x, sigma, data)
    assert rel_err(got, expected) < 5e-5


def test_small_sigma_returns_the_training_point(backend):
    g = torch.Generator().manual_seed(0)
    data = torch.rand(1000, 3, 8, 8, generator=g) * 2 - 1
    pick = torch.tensor([3, 500, 999])
    x = data[pick] + torch.randn(3, 3, 8, 8, generator=g) * 1e-3
    out = fastgauss.empirical_denoise(x, 0.002, data)
    assert torch.allclose(out, data[pick], atol=1e-6)


@pytest.mark.parametrize("precision", ["tf32", "bf16", "auto"])
def test_precision_modes(backend, precision):
    g = torch.Generator().manual_seed(1)
    data = torch.rand(300, 40, generator=g) * 2 - 1
    x, sigma = torch.randn(11, 40, generator=g) * 0.5, torch.full((11,), 2.0)
    den = fastgauss.EmpiricalDenoiser(data, precision=precision)
    tol = 5e-2 if precision == "bf16" else 5e-5  # bf16 is only worth it at large sigma
    assert rel_err(den(x, sigma), ref.empirical_denoiser(x, sigma, data)) < tol
    if backend == "triton":  # sigma = 2: too small for the lower modes; exact products and the exact path
        assert den.last_precision == ("ieee" + EXACT if precision == "auto" else precision)


def test_auto_precision_respects_the_weight_bound():
    # tiny sigma: nothing but exact products keeps weights within 1e-4
    assert choose_precision(0.002, 30.0, 30.0, 3072) == "ieee"
    # huge sigma relative to the data: bf16 is provably harmless
    assert choose_precision(1e4, 1.0, 1.0, 64) == "bf16"
    assert choose_precision(30.0, 1.0, 1.0, 64) in ("tf32", "bf16")


def test_chunked_and_host_streamed_equal_one_pass(backend):
    g = torch.Generator().manual_seed(2)
    data = torch.randn(777, 20, generator=g)
    x, sigma = torch.randn(6, 20, generator=g), torch.rand(6, generator=g) + 0.1
    whole = fastgauss.EmpiricalDenoiser(data, chunk_rows=10_000)(x, sigma)
    chunked = fastgauss.EmpiricalDenoiser(data, chunk_rows=37)(x, sigma)
    assert rel_err(chunked, whole) < 1e-6
    assert rel_err(whole, ref.empirical_denoiser(x, sigma, data)) < 5e-5


def test_partials_over_disjoint_shards_merge_exactly():
    from fastgauss.ops.empirical._torch import chunk_logits, chunk_partial, finish

    g = torch.Generator().manual_seed(3)
    data = torch.randn(200, 9, generator=g, dtype=torch.float64)
    x, inv_var = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.full((4,), 3.0, dtype=torch.float64)
    probes = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)

    def part(rows):
        z, s = chunk_logits(x, inv_var, rows, (rows**2).sum(1))
        return chunk_partial(s, z, rows, probes, sigma_grad=True)

    sigma = inv_var.rsqrt()
    one = finish(part(data), sigma, probes)
    merged = finish(part(data[:77]).merged(part(data[77:]), probes), sigma, probes)
    for a, b in zip(one, merged):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-13)
    # and against the float64 formulas
    for b in range(4):
        jac = ref.empirical_jacobian(x[b], float(sigma[b]), data)
        assert rel_err(merged[1][:, b], probes[:, b] @ jac) < 1e-10


def test_jvp_matches_float64_jacobian_and_finite_differences(backend):
    g = torch.Generator().manual_seed(4)
    data = torch.rand(150, 12, generator=g, dtype=torch.float64)
    den = fastgauss.EmpiricalDenoiser(data)
    x, v = torch.rand(3, 12, generator=g, dtype=torch.float64), torch.randn(5, 3, 12, generator=g, dtype=torch.float64)
    sigma = 0.3
    d, jv = den.jvp(x, sigma, v)
    assert rel_err(d, ref.empirical_denoiser(x, torch.full((3,), sigma, dtype=torch.float64), data)) < 1e-12
    for b in range(3):
        jac = ref.empirical_jacobian(x[b], sigma, data)
        assert rel_err(jv[:, b], v[:, b] @ jac) < 1e-10
    h = 1e-6
    fd = (den(x + h * v[0], sigma) - den(x - h * v[0], sigma)) / (2 * h)
    assert rel_err(jv[0], fd) < 1e-6


def test_autograd_forward_and_reverse(backend):
    g = torch.Generator().manual_seed(5)
    data = torch.rand(80, 6, generator=g, dtype=torch.float64)
    den = fastgauss.EmpiricalDenoiser(data)
    x = torch.rand(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(4, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: den(a, b), (x, s), check_forward_ad=True)
    xs = torch.rand(3, 2, 6, generator=g, dtype=torch.float64)
    batched = torch.func.vmap(lambda t: den(t, 0.4))(xs)
    assert torch.allclose(batched, torch.stack([den(t, 0.4) for t in xs]))


def test_float32_kernel_forward_with_float64_gradient_pass(backend):
    g = torch.Generator().manual_seed(6)
    data = torch.rand(90, 10, generator=g)
    den = fastgauss.EmpiricalDenoiser(data)
    x = torch.rand(2, 10, generator=g, requires_grad=True)
    cot = torch.randn(2, 10, generator=g)
    (grad,) = torch.autograd.grad(den(x, 0.25), x, cot)
    expected = torch.stack([cot[b].double() @ ref.empirical_jacobian(x[b].detach(), 0.25, data) for b in range(2)])
    assert rel_err(grad, expected) < 1e-4


def test_bad_input():
    data = torch.randn(10, 4)
    with pytest.raises(ValueError, match="empty"):
        fastgauss.EmpiricalDenoiser(torch.empty(0, 4))
    with pytest.raises(ValueError, match=r"x: has 5 features.*has 4"):
        fastgauss.empirical_denoise(torch.randn(2, 5), 0.1, data)
    with pytest.raises(ValueError, match="nearest_neighbors"):
        fastgauss.empirical_denoise(torch.randn(2, 4), 0.0, data)
    with pytest.raises(ValueError, match="> 0"):
        fastgauss.empirical_denoise(torch.randn(2, 4), torch.tensor([0.1, -1.0]), data)
    bad = data.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="data: 1 non-finite"):
        fastgauss.EmpiricalDenoiser(bad)
    with pytest.raises(ValueError, match="precision"):
        fastgauss.EmpiricalDenoiser(data, precision="fp8")


def test_training_set_keeps_host_data_in_place():
    data = torch.randn(50, 3)
    ts = TrainingSet(data)
    assert ts.rows.data_ptr() == data.data_ptr()  # no copy of the training set
    assert ts.source is data
    assert torch.allclose(ts.center, data.double().mean(0))


def test_auto_lowers_only_the_distances_and_keeps_weights_within_the_bound(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    g = torch.Generator().manual_seed(7)
    data = torch.rand(200, 16, generator=g) * 2 - 1
    x = torch.rand(5, 16, generator=g) * 2 - 1
    den = fastgauss.EmpiricalDenoiser(data, precision="auto")
    out = den(x, 300.0)
    assert den.last_precision == "bf16 distances, tf32x3 sums"
    assert rel_err(out, ref.empirical_denoiser(x, torch.full((5,), 300.0), data)) < 1e-4
    den(x, 0.01)
    assert den.last_precision == "ieee" + EXACT  # no mode meets the bound: exact products and the exact path


def test_wide_features_d_1000(backend):
    g = torch.Generator().manual_seed(8)
    data = torch.rand(129, 1000, generator=g) * 2 - 1
    x = data[:5] + 0.2 * torch.randn(5, 1000, generator=g)
    sigma = torch.tensor([0.002, 0.5, 3.0, 10.0, 80.0])
    assert rel_err(fastgauss.empirical_denoise(x, sigma, data), ref.empirical_denoiser(x, sigma, data)) < 5e-5


# ---- issue 10: stale caches, memory, cancellation, near ties; issue 12: device=, TF32 ----------------


def _ref_dsigma(x, sigma: float, data) -> torch.Tensor:
    """dD/dsigma = sum_i w_i (y_i - D)(q_i - qbar) / sigma^3, q_i = |x - y_i|^2, in float64 (direct)."""
    x, data = x.double(), data.double()
    q = ((data - x) ** 2).sum(1)
    w = torch.softmax(-q / (2 * sigma**2), dim=0)
    d = w @ data
    return ((data - d) * (w * (q - w @ q))[:, None]).sum(0) / sigma**3


def test_in_place_changes_to_the_data_are_seen(backend):
    g = torch.Generator().manual_seed(20)
    data = torch.rand(120, 3, 5, generator=g) * 2 - 1
    x = torch.rand(6, 3, 5, generator=g) * 2 + 4  # inside the changed data: [3, 7]
    den = fastgauss.EmpiricalDenoiser(data)
    den(x, 0.7)
    data.mul_(2).add_(5)
    expected = ref.empirical_denoiser(x.reshape(6, -1), torch.full((6,), 0.7), data.reshape(120, -1))
    assert rel_err(den(x, 0.7).reshape(6, -1), expected) < 1e-5
    _, jv = den.jvp(x, 0.7, x)
    jac = [ref.empirical_jacobian(x[b].reshape(-1), 0.7, data.reshape(120, -1)) for b in range(6)]
    expected = torch.stack([x[b].reshape(-1).double() @ jac[b] for b in range(6)])
    assert rel_err(jv.reshape(6, -1), expected) < 1e-4 and expected.norm() > 1e-3
    data[7, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="data: 1 non-finite"):
        den(x, 0.7)


def test_non_viewable_data_is_never_copied_whole(backend):
    g = torch.Generator().manual_seed(21)
    base = torch.rand(5, 90, 4, generator=g) * 2 - 1
    data = base.permute(1, 0, 2)  # [90, 5, 4], no flat [90, 20] view
    x = torch.rand(3, 5, 4, generator=g) * 2 - 1
    den = fastgauss.EmpiricalDenoiser(data)
    assert den.data.rows is None and den.data.source is data
    flat = data.reshape(90, 20)
    got = den(x, torch.tensor([0.05, 0.5, 5.0]))
    assert rel_err(got.reshape(3, 20), ref.empirical_denoiser(x.reshape(3, 20), torch.tensor([0.05, 0.5, 5.0]), flat)) < 1e-5


_PEAK_SCRIPT = r"""
import json, sys, torch, fastgauss
sys.path.insert(0, sys.argv[2])
from helpers import PeakRSS
torch.set_num_threads(1)
n, d, b = int(sys.argv[1]), 12288, 64
g = torch.Generator().manual_seed(0)
data = torch.rand(n, d, generator=g) * 2 - 1
x = data[:b] + 0.05 * torch.randn(b, d, generator=g)
v = torch.randn(2, b, d, generator=g)
fastgauss.EmpiricalDenoiser(data[:40]).jvp(x[:2], 0.5, v[:, :2])  # lazy loads, BLAS workspaces
with PeakRSS() as peak:
    den = fastgauss.EmpiricalDenoiser(data)
    den(x, 0.5)
    den.jvp(x, 0.01, v)
    fastgauss.empirical_denoise(x, 0.002, data)
print(json.dumps({"extra": peak.extra, "data": data.numel() * 4}))
"""


def test_peak_memory_at_ffhq_width_is_bounded():
    """d = 12 288, B = 64: building, D, J v (2 probes) and the functional op stay under 1 x data + 64 MB."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", FASTGAUSS_BACKEND="torch")
    tests = str(Path(__file__).resolve().parents[1])  # for helpers.PeakRSS
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, "1500", tests], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak extra {got['extra'] / 1e6:.1f} MB for {got['data'] / 1e6:.1f} MB of data")
    assert got["extra"] < got["data"] + (64 << 20)


def _tie_data(d: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * 2 - 1


@pytest.mark.parametrize("kind", ["memorized", "between"])
def test_jvp_and_sigma_derivative_at_every_sigma(backend, kind):
    # on "triton" D and J v come from the kernels (one pass), dD/dsigma from PyTorch:
    # d = 1024 keeps the interpreted kernels' share of CI time small
    d, n = (3072 if backend == "torch" else 1024), 48
    data = _tie_data(d, n, 22)
    g = torch.Generator().manual_seed(23)
    v = torch.randn(3, 2, d, generator=g)
    den = fastgauss.EmpiricalDenoiser(data)
    for sigma in (0.002, 0.01, 0.1, 1.0, 80.0):
        if kind == "memorized":
            x = data[[3, 17]].clone()
        else:  # between two points, and two candidates 1 nat apart (a near tie at every sigma)
            x = torch.stack([0.55 * data[0] + 0.45 * data[1], _near_ties(data, sigma)[2]])
        dd, jv = den.jvp(x, sigma, v)
        s = torch.full((2,), sigma)
        _, ds = torch.func.jvp(lambda t: den(x, t), (s,), (torch.ones(2),))
        for b in range(2):
            jac = ref.empirical_jacobian(x[b], sigma, data)
            expected = v[:, b].double() @ jac
            err = (jv[:, b].double() - expected).norm(dim=1)
            assert (err <= 1e-4 * (v[:, b].double().norm(dim=1) + expected.norm(dim=1))).all(), (sigma, b, err)
            ref_ds = _ref_dsigma(x[b], sigma, data)
            scale = (ref.empirical_denoiser(x[b:b + 1], s[:1], data)[0] - x[b].double()).norm() / sigma
            tiny = 1e-30  # below fp32's range: a memorized point's 1e-134 comes out as 0
            assert (ds[b].double() - ref_ds).norm() <= 1e-4 * (scale + ref_ds.norm()) + tiny, (sigma, b)


def _near_ties(data: torch.Tensor, sigma: float) -> torch.Tensor:
    """Midpoints of two training points, and points where two candidates are 1 nat apart."""
    mid = torch.stack([(data[0] + data[1]) / 2, (data[2] + data[3]) / 2])
    delta = (data[5] - data[4]).double()
    shift = (sigma**2 / delta.norm()) * delta / delta.norm()  # |x - y4|^2 - |x - y5|^2 = 2 sigma^2
    gap = ((data[4] + data[5]).double() / 2 + shift).float()
    return torch.cat([mid, gap[None]])


@pytest.mark.parametrize("precision", ["ieee", "auto"])
def test_near_ties_are_exact_at_small_sigma(backend, precision):
    data = _tie_data(3072, 40, 24)
    den = fastgauss.EmpiricalDenoiser(data, precision=precision)
    for sigma in (0.002, 0.005, 0.01, 0.05):
        x = _near_ties(data, sigma)
        expected = ref.empirical_denoiser(x, torch.full((3,), sigma), data)
        got = den(x, sigma)
        for b in range(3):
            assert rel_err(got[b], expected[b]) < 1e-5, (sigma, b)
        assert den.last_precision.endswith(EXACT)
    assert 0.2 < float(torch.softmax(-((data[4:6].double() - x[2].double()) ** 2).sum(1) / (2 * 0.05**2), 0)[0]) < 0.8


def test_the_exact_path_is_skipped_where_fp32_weights_are_provably_good(backend):
    g = torch.Generator().manual_seed(25)
    data = torch.rand(200, 8, generator=g) * 2 - 1
    den = fastgauss.EmpiricalDenoiser(data)
    x = torch.rand(4, 8, generator=g)
    den(x, 2000.0)
    assert den.last_precision == "ieee"
    den(x, 0.3)
    assert den.last_precision == "ieee" + EXACT


def test_wide_windows_fall_back_to_float64(backend, monkeypatch):
    monkeypatch.setattr(empirical_precision, "WINDOW_CAP", 3)
    g = torch.Generator().manual_seed(26)
    base = torch.rand(30, 50, generator=g) * 2 - 1
    data = torch.cat([base, base[:5].repeat(4, 1)])  # five rows five times each: windows of 5 rows
    x = base[:5] + 1e-4 * torch.randn(5, 50, generator=g)
    den = fastgauss.EmpiricalDenoiser(data)
    for sigma in (0.002, 0.05):
        assert rel_err(den(x, sigma), ref.empirical_denoiser(x, torch.full((5,), sigma), data)) < 1e-6
        _, jv = den.jvp(x, sigma, x[None])
        jac = [ref.empirical_jacobian(x[b], sigma, data) for b in range(5)]
        expected = torch.stack([x[b].double() @ jac[b] for b in range(5)])
        assert ((jv[0].double() - expected).norm(dim=1) <= 1e-4 * (x.double().norm(dim=1) + expected.norm(dim=1))).all()


def test_candidate_records_stay_within_their_budget_when_windows_hold_most_rows(monkeypatch):
    """sigma near the data's spread puts most rows of a chunk in every window: the float64 near-tie
    records must still stay within MAX_RECORDS (they grew to B x chunk rows at once before: 168 MB
    at B = 256, N = 100 000, d = 64 in benchmarks/empirical/bench_empirical.py), and D stays exact."""
    monkeypatch.setattr(empirical_precision, "MAX_RECORDS", 2000)
    held, real = [], empirical_precision._Candidates.add

    def spy(self, qid, idx, s):
        real(self, qid, idx, s)
        held.append(self.qid.numel())

    monkeypatch.setattr(empirical_precision._Candidates, "add", spy)
    g = torch.Generator().manual_seed(27)
    data, x = torch.randn(3000, 8, generator=g), torch.randn(64, 8, generator=g)
    den = fastgauss.EmpiricalDenoiser(data, device="cpu")
    out = den(x, 1.0)
    assert den.last_precision.endswith(EXACT) and held
    assert max(held) <= 2000, max(held)
    assert rel_err(out, ref.empirical_denoiser(x, torch.full((64,), 1.0), data)) < 1e-6


def _kernel_calls(monkeypatch) -> list:
    from fastgauss.kernels import empirical as kernel

    calls, real = [], kernel.empirical_partial

    def spy(*args, **kwargs):
        calls.append(kwargs.get("threshold") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel, "empirical_partial", spy)
    return calls


def test_triton_backend_really_runs_the_kernel(backend, monkeypatch):
    calls = _kernel_calls(monkeypatch)
    g = torch.Generator().manual_seed(27)
    data = torch.rand(70, 9, generator=g) * 2 - 1
    x = torch.rand(3, 9, generator=g) * 2 - 1
    out = fastgauss.empirical_denoise(x, 0.2, data)
    assert rel_err(out, ref.empirical_denoiser(x, torch.full((3,), 0.2), data)) < 1e-5
    assert (len(calls) > 0) == (backend == "triton")
    if backend == "triton":
        assert any(calls)  # the windowed (exact-path) launch


def test_kernel_writes_every_output_element(monkeypatch):
    """Output buffers poisoned with NaN: any element the kernel fails to write shows up."""
    from fastgauss.kernels import empirical as kernel

    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    def poisoned(shape, *, dtype, device):
        return torch.full(shape, float("nan") if dtype.is_floating_point else -7, dtype=dtype, device=device)

    monkeypatch.setattr(kernel, "_empty", poisoned)
    calls = _kernel_calls(monkeypatch)
    g = torch.Generator().manual_seed(28)
    data = torch.rand(133, 21, generator=g) * 2 - 1
    x = torch.rand(67, 21, generator=g) * 2 - 1  # two query blocks, the second mostly padding
    sigma = torch.exp(torch.empty(67).uniform_(-3, 2, generator=g))
    assert rel_err(fastgauss.empirical_denoise(x, sigma, data), ref.empirical_denoiser(x, sigma, data)) < 1e-5
    assert calls


def test_kernel_takes_strided_and_non_contiguous_inputs(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    calls = _kernel_calls(monkeypatch)
    g = torch.Generator().manual_seed(29)
    wide = torch.rand(101, 34, generator=g) * 2 - 1
    data = wide[:, ::2]  # column stride 2
    x = (torch.rand(17, 5, generator=g) * 2 - 1).T  # [5, 17], not contiguous
    sigma = torch.tensor([0.01, 0.1, 0.5, 2.0, 20.0])
    got = fastgauss.empirical_denoise(x, sigma, data)
    assert rel_err(got, ref.empirical_denoiser(x, sigma, data)) < 1e-5
    rows = torch.rand(101, 17, generator=g) * 2 - 1
    padded = torch.rand(101, 20, generator=g)
    padded[:, :17] = rows
    view = padded[:, :17]  # unit column stride, row stride 20: the kernel reads it in place
    assert rel_err(fastgauss.empirical_denoise(x, sigma, view), ref.empirical_denoiser(x, sigma, rows)) < 1e-5
    assert calls


@pytest.mark.kernel
@given(n=st.sampled_from([65, 129, 300]), d=st.sampled_from([17, 33]), batch=st.sampled_from([65, 129]),
       seed=st.integers(0, 2**31 - 1))
@settings(max_examples=3)
def test_draws_past_the_largest_tile_config(n, d, batch, seed):
    """B past BLOCK_M = 64, N past BLOCK_N x splits, d past BLOCK_K (the 'mma' config 64 x 64 x 16)."""
    import os

    os.environ["FASTGAUSS_BACKEND"] = "triton"
    try:
        g = torch.Generator().manual_seed(seed)
        data = torch.rand(n, d, generator=g) * 2 - 1
        x = data[torch.randint(0, n, (batch,), generator=g)] + 0.3 * torch.randn(batch, d, generator=g)
        sigma = torch.exp(torch.empty(batch).uniform_(-6.2, 4.4, generator=g))
        for precision in ("ieee", "tf32"):  # tf32 selects the 'mma' config (the interpreter computes fp32)
            got = fastgauss.empirical_denoise(x, sigma, data, precision=precision)
            assert rel_err(got, ref.empirical_denoiser(x, sigma, data)) < 5e-5
    finally:
        del os.environ["FASTGAUSS_BACKEND"]


def test_device_argument():
    data = torch.randn(30, 4)
    den = fastgauss.EmpiricalDenoiser(data, device="cpu")
    x = torch.randn(2, 4)
    assert rel_err(den(x, 0.5), ref.empirical_denoiser(x, torch.full((2,), 0.5), data)) < 1e-5
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda'"):
            fastgauss.EmpiricalDenoiser(data, device="cuda")
    with pytest.raises(ValueError, match="device"):
        fastgauss.EmpiricalDenoiser(data, device="gpu")


def test_cuda_pytorch_products_do_not_follow_the_tf32_flag():
    """The PyTorch path on CUDA multiplies in float64 (TF32 never applies); no torch.backends writes."""
    import inspect
    from types import SimpleNamespace

    cuda32 = SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    assert empirical_stream._products_dtype(cuda32, kernel=False) == torch.float64
    assert empirical_stream._products_dtype(SimpleNamespace(dtype=torch.float32, device=torch.device("cpu")),
                                            kernel=False) == torch.float32
    import importlib
    for name in ("op", "module", "training_set", "precision", "stream", "_torch"):
        module = importlib.import_module(f"fastgauss.ops.empirical.{name}")
        assert "torch.backends" not in inspect.getsource(module)


def test_jacobian_spectrum_runs_through_the_empirical_denoiser():
    """jacobian_spectrum vmaps J v over its probes: the streamed partials must take batched probes."""
    g = torch.Generator().manual_seed(7)
    data = torch.randn(40, 1, 4, 4, generator=g, dtype=torch.float64)
    x = (data[0] + data[1]) / 2
    u, s, _ = fastgauss.jacobian_spectrum(fastgauss.EmpiricalDenoiser(data), x, 1.5, k=3, iters=12,
                                          generator=torch.Generator().manual_seed(0))
    jac = ref.empirical_jacobian(x.reshape(1, -1), 1.5, data.reshape(40, -1)).reshape(16, 16)
    expected = torch.linalg.svdvals(jac)[:3]
    assert torch.allclose(s, expected, rtol=1e-6, atol=1e-12), (s, expected)


def test_jacobian_spectrum_through_the_exact_small_sigma_path():
    """fp32 data at a near tie and small sigma: the float64 re-scoring of the window runs under vmap too."""
    g = torch.Generator().manual_seed(11)
    data = torch.randn(40, 1, 4, 4, generator=g)
    x = (data[0] + data[1]) / 2
    sigma = 0.3
    _, s, _ = fastgauss.jacobian_spectrum(fastgauss.EmpiricalDenoiser(data), x, sigma, k=2, iters=20,
                                          generator=torch.Generator().manual_seed(0))
    jac = ref.empirical_jacobian(x.reshape(1, -1).double(), sigma, data.reshape(40, -1).double()).reshape(16, 16)
    expected = torch.linalg.svdvals(jac)[:2]
    assert torch.allclose(s.double(), expected, rtol=1e-4, atol=1e-6), (s, expected)


def _poison(monkeypatch):
    from fastgauss.kernels import empirical as kernel

    def poisoned(shape, *, dtype, device):
        return torch.full(shape, float("nan") if dtype.is_floating_point else -7, dtype=dtype, device=device)

    monkeypatch.setattr(kernel, "_empty", poisoned)


@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
def test_kernel_chunks_and_splits_past_the_largest_tiles(monkeypatch, precision):
    """Several chunks (the last one short), two row splits of the weighted sum, merges of groups of
    chunks, B and d past the 128 x 128 tiles, outputs poisoned with NaN."""
    from fastgauss.kernels import empirical as kernel

    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    _poison(monkeypatch)
    g = torch.Generator().manual_seed(30)
    n, d, b = 301, 133, 131
    monkeypatch.setattr(kernel, "_COPY_BYTES", 128 * d * kernel.copy_bytes_per_element((precision, precision)))
    monkeypatch.setattr(kernel, "_PENDING_BYTES", 2 * 4 * 2 * b * d)  # two chunks per merge
    mode = (precision, precision)
    sms = next(s for s in range(1, 64) if kernel.plan(b, 0, n, d, mode, s).splits == 2)  # two splits
    monkeypatch.setattr(kernel, "multiprocessors", lambda device: sms)
    assert kernel.plan(b, 0, n, d, mode, sms).chunk == 128  # 3 chunks: 128, 128, 45 rows
    data = torch.rand(n, d, generator=g) * 2 - 1
    x = data[torch.randint(0, n, (b,), generator=g)] + 0.3 * torch.randn(b, d, generator=g)
    sigma = torch.exp(torch.empty(b).uniform_(0.5, 3, generator=g))
    calls = _kernel_calls(monkeypatch)
    got = fastgauss.empirical_denoise(x, sigma, data, precision=precision)
    # the interpreter multiplies tf32 in fp32; bf16 operands are rounded (emulated exactly)
    assert rel_err(got, ref.empirical_denoiser(x, sigma, data)) < (2e-2 if precision == "bf16" else 5e-5)
    assert calls


def test_bf16_operands_rounded_before_the_kernel_are_the_kernels_own(tmp_path):
    """x' and y' are rounded to bf16 by torch from their fp32 values; the kernels rounded the same
    fp32 values with .to(tl.bfloat16), which compiles to cvt.rn.bf16.f32 (round to nearest even;
    read from the PTX built for sm_90 and sm_80, since the interpreter's cast truncates). torch's
    rounding is checked bit by bit against round-to-nearest-even on the fp32 bits, ties included;
    gpu_check compares the two on a GPU."""
    import subprocess
    import sys

    g = torch.Generator().manual_seed(31)
    halfway = 1 + (torch.arange(128, dtype=torch.float32) + 0.5) * 2.0**-7  # ties between two bf16
    src = torch.cat([torch.randn(4099, generator=g) * 3, halfway, -halfway, torch.tensor([0.0, -0.0, 1e-40])])
    bits = src.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    nearest_even = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF
    assert torch.equal(src.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF, nearest_even)
    script = (
        "import triton, triton.language as tl\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from triton.compiler import ASTSource\n"
        "@triton.jit\n"
        "def cast(src, dst):\n"
        "    offs = tl.arange(0, 128)\n"
        "    tl.store(dst + offs, tl.load(src + offs).to(tl.bfloat16))\n"
        "for arch in (80, 90):\n"
        "    k = triton.compile(ASTSource(cast, {'src': '*fp32', 'dst': '*bf16'}, {}), target=GPUTarget('cuda', arch, 32))\n"
        "    print(arch, 'cvt.rn.bf16' in k.asm['ptx'], 'cvt.rz' in k.asm['ptx'])\n")
    (tmp_path / "cast.py").write_text(script)  # triton.jit reads the source from a file
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(tmp_path / "cast.py")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["80", "True", "False", "90", "True", "False"], out.stdout


@pytest.mark.parametrize("kind", ["memorized", "between"])
def test_kernel_jvp_is_one_pass_over_chunks(monkeypatch, kind):
    """D and the K probes' J v from the kernels (spied), over several chunks, exact to float64 where
    the sums cancel (sigma = 0.002 at a memorized point: J = 0) and where they do not."""
    from fastgauss.kernels import empirical as kernel

    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    _poison(monkeypatch)
    monkeypatch.setattr(kernel, "_COPY_BYTES", 128 * 256 * 8)
    seen, real = [], kernel.empirical_probe_chunks

    def spy(*args, **kwargs):
        seen.append(args[5].shape[0])
        yield from real(*args, **kwargs)

    monkeypatch.setattr(kernel, "empirical_probe_chunks", spy)
    d, n = 256, 300
    data = _tie_data(d, n, 32)
    v = torch.randn(2, 2, d, generator=torch.Generator().manual_seed(33))
    den = fastgauss.EmpiricalDenoiser(data)
    for sigma in (0.002, 0.1, 1.0, 80.0):
        x = data[[3, 200]].clone() if kind == "memorized" else torch.stack([0.5 * (data[0] + data[1]),
                                                                         _near_ties(data, sigma)[2]])
        dd, jv = den.jvp(x, sigma, v)
        assert rel_err(dd, ref.empirical_denoiser(x, torch.full((2,), sigma), data)) < 1e-5
        for b in range(2):
            expected = v[:, b].double() @ ref.empirical_jacobian(x[b], sigma, data)
            err = (jv[:, b].double() - expected).norm(dim=1)
            assert (err <= 1e-4 * (v[:, b].double().norm(dim=1) + expected.norm(dim=1))).all(), (sigma, b, err)
    assert seen and set(seen) == {2}


def test_launch_geometry_at_the_target_shape():
    """Issue 14: whole waves (17 x 16 = 272 CTAs -> 256) and accumulator traffic under 0.5 GB."""
    from fastgauss.kernels import empirical as kernel

    assert kernel.whole_wave_splits(16, 132) == 16
    b, n, d = 1024, 50_000, 3072
    for mode in ("tf32", "bf16"):
        geo = kernel.plan(b, 0, n, d, (mode, mode), 132)
        ctas = geo.sums_grid[0] * geo.sums_grid[1] * geo.sums_grid[2]
        assert kernel.wave_efficiency(ctas, 132 * kernel.SUMS_CTAS_PER_SM[mode]) > 0.95
        chunks = -(-n // geo.chunk)
        assert chunks * geo.splits * 2 * 4 * b * d < 0.5e9  # each chunk's accumulators written, then read
