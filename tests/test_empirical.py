"""Empirical (memorizing) denoiser against the float64 reference, on both backends."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastgauss
from fastgauss import reference as ref
from fastgauss.empirical import TrainingSet, choose_precision
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
    if backend == "triton":
        assert den.last_precision == ("ieee" if precision == "auto" else precision)  # sigma = 2: too small


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
    from fastgauss._empirical_torch import Partial, chunk_partial

    g = torch.Generator().manual_seed(3)
    data = torch.randn(200, 9, generator=g, dtype=torch.float64)
    x, inv_var = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.full((4,), 3.0, dtype=torch.float64)
    empty = lambda: Partial.empty(4, 9, dtype=torch.float64, device="cpu")  # noqa: E731
    one = chunk_partial(empty(), x, inv_var, data)
    merged = chunk_partial(empty(), x, inv_var, data[:77]).merged(chunk_partial(empty(), x, inv_var, data[77:]))
    assert torch.allclose(one.acc / one.l[:, None], merged.acc / merged.l[:, None], rtol=1e-13)


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
    assert den.last_precision == "ieee"


def test_wide_features_d_1000(backend):
    g = torch.Generator().manual_seed(8)
    data = torch.rand(129, 1000, generator=g) * 2 - 1
    x = data[:5] + 0.2 * torch.randn(5, 1000, generator=g)
    sigma = torch.tensor([0.002, 0.5, 3.0, 10.0, 80.0])
    assert rel_err(fastgauss.empirical_denoise(x, sigma, data), ref.empirical_denoiser(x, sigma, data)) < 5e-5
