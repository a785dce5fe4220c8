"""The candidate pass of nearest_neighbors: its launch plan, the error bound of its tf32x3 products
(against an emulation of that arithmetic) and the exactness of the re-rank under that error."""

import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgauss
from fastgauss.ops.neighbors import op as nn
from fastgauss import reference as ref
from fastgauss.kernels import neighbors as kernel


def test_split_plan_fills_whole_waves_at_the_target_shape():
    """B = 1024, N = 50 000 on 132 SMs (issue 14): the old cdiv(2 SMs, query blocks) split count
    gave 32 x 9 = 288 programs of 32 queries (3 waves, 73 %); 64-query blocks with 16 splits fill
    two waves of one program per SM (97 %), 33 splits two waves of two per SM (100 %)."""
    one = kernel.split_plan(1024, 50_000, 132, ctas_per_sm=1)
    assert (one.query_blocks, one.splits, one.rows_per_split) == (16, 16, 3136)
    two = kernel.split_plan(1024, 50_000, 132, ctas_per_sm=2)
    assert (two.query_blocks, two.splits, two.rows_per_split) == (16, 33, 1536)
    assert kernel.wave_efficiency(16 * 16, 132) == pytest.approx(256 / 264)
    assert kernel.wave_efficiency(32 * 9, 132) == pytest.approx(288 / 396)
    for name, _, int_args, grid in kernel.gate_targets():  # the gate compiles what the launcher runs
        plan = kernel.split_plan(1024, 50_000, 132, kernel.entry_config(name).ctas_per_sm)
        assert grid == plan.grid and int_args["rows_per_split"] == plan.rows_per_split


def test_sm90_tf32x3_configuration_is_built_and_chosen_for_sm90_only(monkeypatch):
    """tf32x3 on sm_90 takes one 64x64x8 warpgroup (4 warps, 2 CTAs per SM, 33 splits at the
    target); the gate builds that entry on sm_90 only (it spills on sm_80) and CPU launches keep
    CONFIGS."""
    sm90 = kernel.CONFIGS_SM90["tf32x3"]
    assert sm90.num_warps == 4 and sm90.ctas_per_sm == 2 and sm90 != kernel.CONFIGS["tf32x3"]
    assert kernel.CONFIGS_SM90["ieee"] == kernel.CONFIGS["ieee"]
    # and the former ieee form, for gpu_check's A/B on the H200
    assert kernel.gate_archs() == {"nn_candidates[tf32x3,sm90]": (90,), "nn_candidates[ieee,direct]": (90,)}
    assert kernel.entry_config("nn_candidates[ieee,direct]") == kernel.IEEE_DIRECT
    assert kernel.entry_config("nn_candidates[tf32x3,sm90]") == sm90
    assert kernel.device_config("tf32x3", torch.device("cpu")) == kernel.CONFIGS["tf32x3"]
    for major, expected in ((9, sm90), (8, kernel.CONFIGS["tf32x3"])):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, m=major: (m, 0))
        assert kernel.device_config("tf32x3", torch.device("cuda", 0)) == expected


@settings(max_examples=300, deadline=None)
@given(b=st.integers(1, 5000), n=st.integers(1, 200_000), sms=st.sampled_from([2, 108, 132]),
       per_sm=st.integers(1, 2))
def test_split_plan_covers_every_row_once_and_never_loses_to_the_old_count(b, n, sms, per_sm):
    """A multiple of 16 rows per split, every row in one split, and a modelled time (waves x tiles per split)
    never above the old count's, cdiv(2 waves, query blocks) splits of cdiv(N, splits) rows."""
    plan = kernel.split_plan(b, n, sms, per_sm)
    assert plan.query_blocks == triton.cdiv(b, kernel.BLOCK_M)
    assert plan.rows_per_split % 16 == 0
    assert (plan.splits - 1) * plan.rows_per_split < n <= plan.splits * plan.rows_per_split
    wave = sms * per_sm
    old = min(max(1, triton.cdiv(2 * wave, plan.query_blocks)), triton.cdiv(n, kernel.BLOCK_N))
    old_rows = triton.cdiv(n, old)
    old_cost = kernel.plan_cost(plan.query_blocks, triton.cdiv(n, old_rows), old_rows, wave)
    assert kernel.plan_cost(plan.query_blocks, plan.splits, plan.rows_per_split, wave) <= old_cost
    assert plan.query_blocks * plan.splits < max(plan.query_blocks, 2 * wave) + plan.query_blocks


# ---------------------------------------------------------------- the tf32x3 bound


def _tf32_split(v: torch.Tensor, rounding: str) -> torch.Tensor:
    """fp32 -> tf32 (11 significant bits) by truncation or round-to-nearest (ties away)."""
    bits = v.view(torch.int32)
    if rounding == "nearest":
        bits = bits + 0x1000  # the magnitude's bits: ties away from zero for either sign
    return (bits & ~0x1FFF).view(torch.float32)


def _chop(s: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 rounded toward zero."""
    f = s.float()
    over = f.double().abs() > s.abs()
    return torch.where(over, torch.nextafter(f, torch.zeros_like(f)), f)


def _tf32x3_dots(a: torch.Tensor, y: torch.Tensor, rounding: str, block: int = 8) -> torch.Tensor:
    """[B, N] a @ y.T as modelled in dot_error: split operands, exact products, blocks of ``block``
    products aligned with the accumulator and truncated at 2^-23 of the largest, result chopped."""
    a_hi = _tf32_split(a, rounding)
    a_lo = _tf32_split(a - a_hi, rounding)
    y_hi = _tf32_split(y, rounding)
    y_lo = _tf32_split(y - y_hi, rounding)
    acc = torch.zeros(a.shape[0], y.shape[0], dtype=torch.float64)
    for p, q in ((a_lo, y_hi), (a_hi, y_lo), (a_hi, y_hi)):  # the order of Triton's decomposition
        p, q = p.double(), q.double()
        for k0 in range(0, a.shape[1], block):
            terms = p[:, None, k0:k0 + block] * q[None, :, k0:k0 + block]  # exact: 22-bit products
            terms = torch.cat([terms, acc[..., None]], dim=-1)
            top = terms.abs().amax(-1, keepdim=True).clamp_min(2.0**-126)
            ulp = torch.exp2(torch.floor(torch.log2(top)) - 23)
            acc = _chop(torch.trunc(terms / ulp).sum(-1) * ulp[..., 0]).double()
    return acc


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("d,offset", [(7, 0.0), (129, 30.0), (1000, 3.0), (3072, 0.5)])
def test_tf32x3_products_stay_within_dot_error(rounding, d, offset):
    """Adversarial inputs (a common offset: large products, small differences) through the emulated
    tf32x3 arithmetic (either rounding of the split): every dot product errs by at most
    dot_error(d) |a| |y|."""
    g = torch.Generator().manual_seed(d)
    a = (torch.rand(6, d, generator=g) * 2 - 1 + offset).float()
    y = (torch.rand(40, d, generator=g) * 2 - 1 + offset).float()
    got = _tf32x3_dots(a, y, rounding)
    exact = a.double() @ y.double().T
    scale = a.double().norm(dim=1)[:, None] * y.double().norm(dim=1)[None, :]
    worst = float(((got - exact).abs() / scale).max())
    assert worst <= kernel.dot_error(d, "tf32x3")
    if d >= 1000:
        assert worst > 2.0**-24  # the emulation does round: the check has something to bound


def _perturbed_candidates(sign_of_true: float):
    """A stand-in for the kernel's candidate pass: exact keys pushed by the full error bound, the
    true nearest rows up and every other row down (the worst the tf32x3 products may do)."""

    def candidates(a, data, summary, count):
        gamma = kernel.dot_error(a.shape[1], "tf32x3")
        bound = nn._error_bound(a, summary, gamma, 2.0**-24)
        exact = torch.cdist(a.double(), data.double() - summary.center) ** 2
        order = exact.argsort(dim=1, stable=True)
        push = torch.full_like(exact, -1.0).scatter_(1, order[:, :3], sign_of_true)
        keys = (exact + push * bound[:, None]).float()
        vals, idx = keys.double().topk(min(count, keys.shape[1]), dim=1, largest=False)
        return vals.float(), idx, gamma

    return candidates


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("n,d,batch,k", [(1, 3, 2, 1), (63, 129, 7, 2), (129, 63, 5, 3), (1000, 40, 9, 2)])
def test_exact_under_keys_off_by_the_whole_tf32x3_bound(monkeypatch, sign, n, d, batch, k):
    """Indices equal the float64 brute force when every key errs by the whole bound, the true nearest
    rows pushed away and the others pulled in (or the reverse); with near ties (copies and
    points a hair apart) and odd sizes. So the band of twice the bound covers the tf32x3 error."""
    monkeypatch.setattr(nn, "_kernel_candidates", _perturbed_candidates(sign))
    monkeypatch.setattr(nn, "backend_for", lambda x: "triton")
    g = torch.Generator().manual_seed(n + d)
    data = torch.rand(n, d, generator=g) * 2 - 1 + 4
    if n > 10:
        data[9] = data[4]  # an exact tie: the lower index first
        data[8] = data[4] + 1e-6
    x = torch.cat([data[4:5] + 1e-5, torch.rand(batch - 1, d, generator=g) * 2 - 1 + 4])
    dist, idx = fastgauss.nearest_neighbors(x, data, k=k)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, k)
    assert torch.equal(idx, ref_idx)
    assert float(((dist.double() - ref_dist).abs() / ref_dist.clamp_min(1e-30)).max()) < 1e-6


@pytest.mark.kernel
@pytest.mark.parametrize("precision", kernel.PRECISIONS)
def test_kernel_distances_stay_within_the_key_bound_on_offset_data(monkeypatch, precision):
    """The interpreted kernel (exact fp32 products) on data with a large common offset: every
    distance it returns is within the bound the re-rank uses, the fp32 sums of the raw-row mode
    (|a|^2 + 2 a.c + |y - c|^2 - 2 a.y) included; and the neighbours equal the float64 brute force."""
    g = torch.Generator().manual_seed(21)
    data = torch.rand(130, 40, generator=g) * 2 - 1 + 50
    x = torch.cat([data[3:4] + 1e-3, torch.rand(4, 40, generator=g) * 2 - 1 + 50])
    summary = nn._summary(data, data)
    a = (x.double() - summary.center).float()
    dist, idx = kernel.nn_candidates(a, (a.double() ** 2).sum(1).float(), data, summary.center.float(),
                                     summary.norms.float(), kernel.MAX_CANDIDATES, precision=precision)
    exact = ((data[idx.reshape(-1)].double().reshape(5, -1, 40) - x.double()[:, None]) ** 2).sum(-1)
    bound = nn._error_bound(a, summary, kernel.dot_error(40, precision), 2.0**-24)
    # up to one constant per query: the spread of the errors is what the band compares
    err = dist.double() - exact
    assert bool(((err.amax(1) - err.amin(1)) <= 2 * bound).all())
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    monkeypatch.setattr(kernel, "DEFAULT_PRECISION", precision)
    _, found = fastgauss.nearest_neighbors(x, data, k=3)
    assert torch.equal(found, ref.nearest_neighbors(x, data, 3)[1])
