"""fastgauss.Moments against the float64 reference, on both backends."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastgauss
from fastgauss import reference as ref
from helpers import RTOL, rel_err, random_chunks

ODD_DIMS = [1, 7, 63, 129]


def stream(x, sizes, z=None, **kwargs):
    m = fastgauss.Moments(**kwargs)
    start = 0
    for size in sizes:
        m.update(x[start:start + size], None if z is None else z[start:start + size])
        start += size
    return m


@given(d=st.sampled_from(ODD_DIMS), n=st.integers(1, 300), max_chunk=st.integers(1, 300),
       seed=st.integers(0, 2**31 - 1))
def test_covariance_matches_reference_on_odd_shapes(backend, d, n, max_chunk, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(d, generator=g) * 3 + torch.randn(d, generator=g)
    m = stream(x, random_chunks(g, n, max_chunk))
    assert m.count == n
    assert rel_err(m.mean, ref.mean(x)) < RTOL[torch.float32]
    if n > 1:
        assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6
        assert rel_err(m.covariance(ddof=1), ref.covariance(x, ddof=1)) < 1e-6
    else:
        assert torch.equal(m.covariance(), torch.zeros(d, d, dtype=torch.float64))


def test_covariance_is_exactly_symmetric(backend):
    x = torch.randn(150, 65)
    cov = stream(x, [150]).covariance()
    assert torch.equal(cov, cov.T)


@pytest.mark.parametrize("max_chunk", [1, 7, 1000])
def test_large_common_offset_loses_no_precision(backend, max_chunk):
    """fp32 data at 1e3 with unit spread: each chunk is centred on its own mean first."""
    g = torch.Generator().manual_seed(max_chunk)
    n = 3000 if backend == "torch" else (300 if max_chunk == 1 else 1500)
    x = (1e3 + torch.randn(n, 24, generator=g)).to(torch.float32)
    m = stream(x, random_chunks(g, n, max_chunk))
    assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input(backend, dtype):
    x = (torch.randn(200, 33) + 5).to(dtype)
    m = stream(x, [64, 64, 72])
    assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6  # halves are exact in fp32 products


def test_float64_input_keeps_float64_products():
    x = torch.randn(200, 33, dtype=torch.float64) + 1e6
    m = stream(x, [64, 64, 72])
    assert rel_err(m.covariance(), ref.covariance(x)) < RTOL[torch.float64] * 100


def test_float64_runs_on_pytorch_even_when_triton_is_forced(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    x = torch.randn(40, 3, dtype=torch.float64) + 1e5
    assert rel_err(fastgauss.Moments().update(x).covariance(), ref.covariance(x)) < 1e-10


@given(d=st.sampled_from([3, 64, 65]), dz=st.sampled_from([1, 5, 70]), n=st.integers(2, 150),
       seed=st.integers(0, 2**31 - 1))
def test_cross_covariance_matches_reference(backend, d, dz, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) + 10
    z = x[:, :1] * torch.randn(dz, generator=g) + torch.randn(n, dz, generator=g) - 4
    m = stream(x, random_chunks(g, n, 64), z=z)
    assert rel_err(m.cross_covariance(), ref.cross_covariance(z, x)) < 1e-6
    assert rel_err(m.cross_mean, ref.mean(z)) < 1e-7
    assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6


@given(n=st.integers(2, 200), cuts=st.lists(st.integers(0, 200), max_size=5), seed=st.integers(0, 2**31 - 1))
def test_merge_of_arbitrary_splits_equals_one_pass(n, cuts, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 9, generator=g) * 2 + 7
    z = torch.randn(n, 4, generator=g)
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    parts = [fastgauss.Moments().update(x[a:b], z[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = fastgauss.Moments()
    for part in [fastgauss.Moments()] + parts:  # an empty accumulator merges as a no-op
        merged.merge(part)
    one_pass = fastgauss.Moments().update(x, z)
    assert merged.count == n
    assert rel_err(merged.covariance(), one_pass.covariance()) < 1e-6
    assert rel_err(merged.covariance(), ref.covariance(x)) < 1e-6
    assert rel_err(merged.cross_covariance(), ref.cross_covariance(z, x)) < 1e-6
    assert rel_err(merged.mean, ref.mean(x)) < 1e-12


def test_merge_rejects_mismatched_features():
    a = fastgauss.Moments().update(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        a.merge(fastgauss.Moments().update(torch.randn(5, 4)))
    with pytest.raises(ValueError, match="paired"):
        a.merge(fastgauss.Moments().update(torch.randn(5, 3), torch.randn(5, 2)))


def test_resume_from_state_dict_equals_uninterrupted_pass(backend, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(300, 20, generator=g) + 3, torch.randn(300, 6, generator=g)
    sizes = random_chunks(g, 300, 50)
    whole = stream(x, sizes, z=z)
    first = stream(x[:120], [60, 60], z=z[:120])
    torch.save(first.state_dict(), tmp_path / "moments.pt")
    resumed = fastgauss.Moments().load_state_dict(torch.load(tmp_path / "moments.pt"))
    assert resumed.count == 120 and resumed.feature_shape == (20,)
    resumed.update(x[120:], z[120:])
    assert resumed.count == 300
    for got, want in [(resumed.covariance(), whole.covariance()),
                      (resumed.cross_covariance(), whole.cross_covariance()),
                      (resumed.mean, whole.mean)]:
        assert rel_err(got, want) < 1e-6
    assert rel_err(resumed.covariance(), ref.covariance(x)) < 1e-6


def test_load_state_dict_rejects_bad_shapes():
    state = fastgauss.Moments().update(torch.randn(5, 3)).state_dict()
    state["scatter"] = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="scatter"):
        fastgauss.Moments().load_state_dict(state)


def _snapshot(m):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("bad", ["nan", "inf", "features", "rank", "z_nan", "z_batch", "unpaired"])
def test_rejected_update_leaves_state_unchanged(backend, bad):
    m = fastgauss.Moments().update(torch.randn(10, 4, 3), torch.randn(10, 2))
    before = _snapshot(m)
    x, z = torch.randn(6, 4, 3), torch.randn(6, 2)
    if bad == "nan":
        x[2, 1, 0] = float("nan")
    elif bad == "inf":
        x[5, 3, 2] = float("-inf")
    elif bad == "features":
        x = torch.randn(6, 13)
    elif bad == "rank":
        x = torch.randn(12)
    elif bad == "z_nan":
        z[0, 0] = float("nan")
    elif bad == "z_batch":
        z = torch.randn(5, 2)
    elif bad == "unpaired":
        z = None
    with pytest.raises(ValueError):
        m.update(x, z)
    after = m.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key
        else:
            assert value == after[key], key


def test_error_messages_name_the_sizes():
    m = fastgauss.Moments().update(torch.randn(3, 12))
    with pytest.raises(ValueError, match=r"feature size 13.*12 features"):
        m.update(torch.randn(3, 13))
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(5,\)"):
        m.update(torch.randn(5))
    with pytest.raises(ValueError, match=r"1 non-finite"):
        m.update(torch.tensor([[float("nan")] + [0.0] * 11]))


def test_too_few_samples_for_covariance():
    m = fastgauss.Moments()
    with pytest.raises(ValueError, match="at least 1 sample"):
        m.covariance()
    m.update(torch.randn(1, 5))
    m.covariance()  # ddof=0 with one sample: zeros, valid
    with pytest.raises(ValueError, match=r"ddof=1.*at least 2 sample"):
        m.covariance(ddof=1)
    with pytest.raises(ValueError, match="paired"):
        m.cross_covariance()


def test_empty_batch_is_a_noop(backend):
    m = fastgauss.Moments().update(torch.empty(0, 8))
    assert m.count == 0 and m.dim is None
    x = torch.randn(20, 8)
    m.update(x).update(torch.empty(0, 8))
    assert m.count == 20
    assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6


def test_integer_input_is_converted(backend):
    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    m = fastgauss.Moments().update(x)
    assert rel_err(m.covariance(), ref.covariance(x.reshape(64, -1))) < 1e-6


def test_wide_integers_go_through_float64():
    big = torch.randint(-(2**40), 2**40, (32, 5), dtype=torch.int64)
    m = fastgauss.Moments().update(big)
    assert rel_err(m.covariance(), ref.covariance(big)) < 1e-12  # int64 goes through float64


def test_numpy_input_through_dlpack(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 17)).astype(np.float32)
    m = fastgauss.Moments().update(x[:30]).update(x[30:])
    assert rel_err(m.covariance(), ref.covariance(torch.from_numpy(x))) < 1e-6
    readonly = x.copy()
    readonly.flags.writeable = False
    assert fastgauss.Moments().update(readonly).count == 80
    with pytest.raises(TypeError, match="DLPack"):
        fastgauss.Moments().update("not an array")


def test_non_contiguous_and_stride_zero_inputs(backend):
    base = torch.randn(40, 30)
    strided = base.T[:, ::2]  # [30, 20], neither dim contiguous
    repeated = torch.randn(1, 11).expand(25, 11)  # stride 0 over the batch
    m = fastgauss.Moments().update(strided)
    assert rel_err(m.covariance(), ref.covariance(strided)) < 1e-6
    extra = torch.randn(5, 11)
    m = fastgauss.Moments().update(repeated).update(extra)
    assert m.count == 30
    assert rel_err(m.covariance(), ref.covariance(torch.cat([repeated, extra]))) < 1e-6


def test_eigh_is_descending_and_reconstructs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 12, generator=g) @ torch.randn(12, 12, generator=g)
    m = fastgauss.Moments().update(x)
    vals, vecs = m.eigh()
    assert torch.all(vals[:-1] >= vals[1:]) and torch.all(vals >= 0)
    assert rel_err(vecs @ torch.diag(vals) @ vecs.T, ref.covariance(x)) < 1e-6
    top_vals, top_vecs = m.eigh(rank=3)
    assert top_vals.shape == (3,) and top_vecs.shape == (12, 3)
    assert torch.allclose(top_vals, vals[:3])
    with pytest.raises(ValueError, match="rank"):
        m.eigh(rank=13)


def test_from_loader_streams_tuples_and_pairs():
    x, y = torch.randn(100, 2, 3), torch.randint(0, 10, (100,))
    loader = list(zip(x.split(16), y.split(16)))
    m = fastgauss.Moments.from_loader(loader, progress=False)
    assert m.count == 100 and m.feature_shape == (2, 3)
    assert rel_err(m.covariance(), ref.covariance(x.reshape(100, -1))) < 1e-6
    z = torch.randn(100, 4)
    paired = fastgauss.Moments.from_loader(zip(x.split(30), z.split(30)), paired=True, progress=False)
    assert rel_err(paired.cross_covariance(), ref.cross_covariance(z, x.reshape(100, -1))) < 1e-6
    with pytest.raises(ValueError, match="paired"):
        fastgauss.Moments.from_loader([x], paired=True, progress=False)


def test_precision_modes_are_validated_and_accepted(backend):
    """Every mode is accepted and runs its launch: an indexing and masking check, not a precision
    one (the interpreter ignores input_precision and the PyTorch path computes exact products, so
    off the GPU every mode records and gives exact fp32 products; gpu_check measures tf32)."""
    x = torch.randn(50, 10)
    for precision in ("ieee", "tf32x3", "tf32"):
        m = fastgauss.Moments(precision=precision).update(x)
        assert m.product_precision == "float32"
        assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6
    with pytest.raises(ValueError, match="precision"):
        fastgauss.Moments(precision="fp8")


# ---------------------------------------------------------------- exact rank and the product precision (issue 10)


@given(n=st.integers(2, 60), d=st.integers(1, 80), seed=st.integers(0, 2**31 - 1))
def test_eigh_applies_the_exact_rank_rule_to_fp32_data(backend, n, d, seed):
    """N rows centred on their mean span at most N - 1 directions: past min(N - 1, d) the
    eigenvalues are exactly 0 (fp32 products leave ~1e-7 lambda_max there), the rest match float64."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) + 3).float()
    m = stream(x, random_chunks(g, n, 17))
    assert m.product_precision == "float32" and m.exact_rank() == min(n - 1, d)
    vals, vecs = m.eigh()
    ref_vals = torch.linalg.eigvalsh(ref.covariance(x)).flip(0)
    r = min(n - 1, d)
    assert torch.equal(vals[r:], torch.zeros(d - r, dtype=torch.float64))
    assert (vals[:r] > 0).all()
    assert rel_err(vals[:r], ref_vals[:r]) < 1e-6
    assert rel_err(vecs.T @ vecs, torch.eye(d, dtype=torch.float64)) < 1e-12  # a basis of the null space too
    top, top_vecs = m.eigh(rank=max(1, r))
    assert torch.equal(top, vals[:max(1, r)]) and top_vecs.shape == (d, max(1, r))


def test_eigh_zeroes_eigenvalues_below_the_products_rounding_level():
    """N > d data in a 5-dimensional subspace: fp32 products put rounding (~1e-7 lambda_max) in the
    other 35 directions; float64 products put far less, and the rule follows the precision."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2000, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 40, generator=g, dtype=torch.float64)
    for data, products in ((x.float(), "float32"), (x, "float64")):
        m = fastgauss.Moments().update(data)
        assert m.product_precision == products
        raw = torch.linalg.eigvalsh(m.covariance()).flip(0)
        assert raw[5:].abs().max() > 0  # rounding is there before the rule
        vals, _ = m.eigh()
        assert (vals[:5] > 0).all() and torch.equal(vals[5:], torch.zeros(35, dtype=torch.float64))
    assert fastgauss.Moments().update(x.float()).rounding_level() > fastgauss.Moments().update(x).rounding_level()


def test_product_precision_is_recorded_merged_and_saved(backend, tmp_path):
    x = torch.randn(30, 6)
    m32, m64 = fastgauss.Moments().update(x), fastgauss.Moments().update(x.double())
    assert fastgauss.Moments().product_precision is None
    assert (m32.product_precision, m64.product_precision) == ("float32", "float64")
    assert fastgauss.Moments().update(x.half()).product_precision == "float32"
    assert fastgauss.Moments().merge(m64).merge(m32).product_precision == "float32"  # the worst of both
    torch.save(m32.state_dict(), tmp_path / "m.pt")
    loaded = fastgauss.Moments().load_state_dict(torch.load(tmp_path / "m.pt"))
    assert loaded.product_precision == "float32" and "product_precision" in repr(loaded)
    assert torch.equal(loaded.eigh()[0], m32.eigh()[0])


@pytest.mark.parametrize("precision,assumed", [("ieee", "float32"), ("tf32x3", "tf32x3"), ("tf32", "tf32")])
def test_old_state_dicts_load_with_a_conservative_product_precision(precision, assumed):
    """Version-1 states did not record the products: assume the worst their kernel mode allows."""
    state = fastgauss.Moments(precision=precision).update(torch.randn(20, 4, dtype=torch.float64)).state_dict()
    state["version"] = 1
    del state["product_precision"]
    m = fastgauss.Moments().load_state_dict(state)
    assert m.product_precision == assumed and m.count == 20
    state["product_precision"] = "fp8"
    state["version"] = 2
    with pytest.raises(ValueError, match="product_precision"):
        fastgauss.Moments().load_state_dict(state)


def test_cuda_products_follow_the_process_tf32_setting(monkeypatch):
    """The PyTorch path's products are TF32 when the process allows it: the record says so
    (checked without changing the process-wide flag: its reader is patched)."""
    from fastgauss.ops.moments import products as mod

    x = torch.randn(4, 3)
    assert mod._torch_products(x) == "float32" and mod._torch_products(x.double()) == "float64"
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert mod._torch_products(x) == "tf32" and mod._torch_products(x.double()) == "float64"


def test_spectrum_plot_shows_the_exact_zeros_as_such(tmp_path, monkeypatch):
    """fastgauss stats' picture of N = 10 fp32 rows at d = 33: 9 eigenvalues drawn, rank stated;
    before the exact-rank rule the rounding eigenvalues were drawn as real variance."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from fastgauss.diagnostics.spectrum import components_for_variance, nonzero_spectrum, plot_spectrum

    x = (torch.randn(10, 33, generator=torch.Generator().manual_seed(0)) + 2).float()
    m = fastgauss.Moments().update(x)
    vals, vecs = m.eigh()
    assert nonzero_spectrum(vals)[0] == 9 and max(components_for_variance(vals).values()) <= 9
    captured = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: captured.append(fig))
    plot_spectrum(tmp_path / "s.png", vals, m.mean, vecs, (33,), "t")
    spectrum_axes, cumulative_axes = captured[0].axes[:2]
    drawn = spectrum_axes.lines[0].get_ydata()
    assert len(drawn) == 9 and (drawn > 0).all()
    assert "rank 9 of 33" in spectrum_axes.get_title()
    assert len(cumulative_axes.lines[0].get_ydata()) == 9
