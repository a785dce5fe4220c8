"""One device policy (issue 15): nothing moves a caller's tensors or a module's state implicitly.

A mismatch is a ValueError naming the argument, both devices and the fix; ``.to()`` on a module
moves its state. No GPU here: the "meta" device stands in for a second device (a tensor there has
a device and a shape but no values, so any implicit move or computation fails in torch instead).
"""

import pytest
import torch

import fastgauss
from fastgauss._core.device import require_device, same_device

META = torch.device("meta")


def _fix(name, got, owner, want):
    return rf"{name}: on {got}, but {owner} is on {want}; move one with \.to\(\)"


def test_helper_names_argument_devices_and_fix():
    x = torch.zeros(2, 3)
    assert require_device(x, "x", "cpu", "this thing") is x
    with pytest.raises(ValueError, match=_fix("x", "cpu", "this thing", "meta")):
        require_device(x, "x", META, "this thing")
    assert same_device(("x", x), ("y", torch.ones(1))) == torch.device("cpu")
    with pytest.raises(ValueError, match=_fix("y", "meta", "x", "cpu")):
        same_device(("x", x), ("y", torch.ones(1, device=META)))


# ---------------------------------------------------------------- Moments
def test_moments_update_on_another_device_raises():
    m = fastgauss.Moments().update(torch.randn(20, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=_fix("x", "meta", "this Moments' state", "cpu")):
        m.update(torch.zeros(4, 3, device=META))
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=_fix("z", "meta", "x", "cpu")):
        fastgauss.Moments().update(x, torch.zeros(4, 2, device=META))
    assert m.count == 20


def test_moments_to_moves_state_and_merge_never_does():
    data = torch.randn(30, 3, dtype=torch.float64)
    m = fastgauss.Moments().update(data)
    moved = fastgauss.Moments().update(data).to(META)
    assert moved.device == META and moved.count == 30 and moved._scatter.device == META
    with pytest.raises(ValueError, match=_fix("other", "meta", "this Moments' state", "cpu")):
        m.merge(moved)
    assert m.count == 30
    same = fastgauss.Moments().update(data)
    assert same.to("cpu") is same and same.device == torch.device("cpu")  # (meta holds no values to move back)
    torch.testing.assert_close(same.covariance(), m.covariance(), rtol=0, atol=0)
    assert fastgauss.Moments().to(META).device is None  # nothing accumulated yet: nothing to move


# ---------------------------------------------------------------- Gaussian
def _gaussian():
    return fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(torch.randn(50, 6)), rank=4)


def test_gaussian_denoiser_never_moves_x():
    g = _gaussian()
    owner = "this GaussianDenoiser"
    with pytest.raises(ValueError, match=_fix("x", "meta", owner, "cpu")):
        g(torch.zeros(2, 6, device=META), 0.5)
    with pytest.raises(ValueError, match=_fix("v", "meta", owner, "cpu")):
        g.jvp(torch.zeros(2, 6), 0.5, torch.zeros(2, 6, device=META))
    with pytest.raises(ValueError, match=_fix("latents", "meta", owner, "cpu")):
        g.sample(torch.zeros(2, 6, device=META), fastgauss.edm_sigmas(3))
    g.to(META)  # .to() moves the buffers, as nn.Module users expect
    assert {t.device for t in g.buffers()} == {META}
    with pytest.raises(ValueError, match=_fix("x", "cpu", owner, "meta")):
        g(torch.zeros(2, 6), 0.5)


def test_gaussian_denoise_functional_never_moves_its_operands():
    u = torch.linalg.qr(torch.randn(6, 2))[0]
    x = torch.randn(3, 6)
    with pytest.raises(ValueError, match=_fix("mean", "meta", "x", "cpu")):
        fastgauss.gaussian_denoise(x, 0.5, torch.zeros(6, device=META), torch.ones(2), u)
    with pytest.raises(ValueError, match=_fix("eigvals", "meta", "x", "cpu")):
        fastgauss.gaussian_denoise(x, 0.5, torch.zeros(6), torch.ones(2, device=META), u)
    with pytest.raises(ValueError, match=_fix("eigvecs", "meta", "x", "cpu")):
        fastgauss.gaussian_denoise(x, 0.5, torch.zeros(6), torch.ones(2), u.to(META))


# ---------------------------------------------------------------- empirical
def test_empirical_denoiser_never_moves_x_or_streams_implicitly():
    data = torch.randn(40, 5)
    den = fastgauss.EmpiricalDenoiser(data)
    owner = "this EmpiricalDenoiser"
    assert den.device == torch.device("cpu")
    with pytest.raises(ValueError, match=_fix("x", "meta", owner, "cpu")):
        den(torch.zeros(2, 5, device=META), 0.5)
    with pytest.raises(ValueError, match=_fix("x", "meta", owner, "cpu")):
        den.jvp(torch.zeros(2, 5, device=META), 0.5, torch.zeros(2, 5, device=META))
    with pytest.raises(ValueError, match=_fix("v", "meta", owner, "cpu")):
        den.jvp(torch.zeros(2, 5), 0.5, torch.zeros(2, 5, device=META))
    with pytest.raises(ValueError, match=_fix("x", "meta", owner, "cpu")):
        den.score(torch.zeros(2, 5, device=META), 0.5)
    # device= is the explicit choice to stream host data elsewhere: queries must then be there.
    streaming = fastgauss.EmpiricalDenoiser(data, device=META)
    assert streaming.device == META and streaming.data.source is data
    with pytest.raises(ValueError, match=_fix("x", "cpu", owner, "meta")):
        streaming(torch.zeros(2, 5), 0.5)


def test_empirical_denoiser_to_moves_its_data():
    data = torch.randn(40, 5)
    x = data[:3] + 0.01
    before = fastgauss.EmpiricalDenoiser(data)(x, 0.1)
    den = fastgauss.EmpiricalDenoiser(data)
    assert den.to(META) is den
    assert den.device == META and den.data.source.device == META
    with pytest.raises(ValueError, match=_fix("x", "cpu", "this EmpiricalDenoiser", "meta")):
        den(x, 0.1)
    # a streaming denoiser (host data, work elsewhere): .to() sets where the work runs, the data follows
    streaming = fastgauss.EmpiricalDenoiser(data, device=META).to("cpu")
    assert streaming.device == torch.device("cpu") and streaming.data.source is data
    torch.testing.assert_close(streaming(x, 0.1), before, rtol=0, atol=0)
    den64 = fastgauss.EmpiricalDenoiser(data).to(torch.float64)
    assert den64.data.source.dtype == torch.float64 and den64.device == torch.device("cpu")
    torch.testing.assert_close(den64(x.double(), 0.1), fastgauss.empirical_denoise(x.double(), 0.1, data.double()))


def test_empirical_denoise_functional_never_moves_data():
    with pytest.raises(ValueError, match=_fix("data", "meta", "x", "cpu")):
        fastgauss.empirical_denoise(torch.zeros(2, 5), 0.5, torch.zeros(10, 5, device=META))


# ---------------------------------------------------------------- neighbours
def test_nearest_neighbors_never_moves_data():
    with pytest.raises(ValueError, match=_fix("data", "meta", "x", "cpu")):
        fastgauss.nearest_neighbors(torch.zeros(2, 5), torch.zeros(10, 5, device=META))
    with pytest.raises(ValueError, match=_fix("data", "meta", "samples", "cpu")):
        fastgauss.gl_score(torch.ones(2, 5), torch.zeros(10, 5, device=META))


# ---------------------------------------------------------------- samplers and teleportation
def test_teleport_never_moves_the_gaussian():
    g = _gaussian().to(META)
    latents = torch.randn(2, 6)
    with pytest.raises(ValueError, match=_fix("latents", "cpu", "this GaussianDenoiser", "meta")):
        fastgauss.sample_euler(_gaussian(), latents, fastgauss.edm_sigmas(4), gaussian=g, switch_sigma=1.0)


# ---------------------------------------------------------------- diagnostics
def test_diagnostics_never_move_operands():
    from fastgauss.diagnostics.jacobian import subspace_alignment

    with pytest.raises(ValueError, match=_fix("v", "meta", "x", "cpu")):
        fastgauss.jvp(lambda x, s: x, torch.zeros(2, 6), 0.5, torch.zeros(2, 6, device=META))
    with pytest.raises(ValueError, match=_fix("b", "meta", "a", "cpu")):
        subspace_alignment(torch.randn(6, 2), torch.zeros(6, 2, device=META))
    data = torch.randn(30, 6)
    with pytest.raises(ValueError, match=_fix("gaussian", "meta", "data", "cpu")):
        fastgauss.distill_linear(lambda x, s: x, data, [0.5], gaussian=_gaussian().to(META))


@pytest.mark.parametrize("name", ["fastgauss._core.device", "fastgauss._core.trajectory"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_cuda_without_an_index_is_the_current_gpu(monkeypatch):
    # No GPU here: a stand-in with a CUDA device (require_device reads only .device) and a patched
    # current device. device="cuda" (EmpiricalDenoiser(data, device="cuda")) must match cuda:0
    # tensors when GPU 0 is current, and name cuda:1 when that one is.
    from types import SimpleNamespace

    x = SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert require_device(x, "x", "cuda", "this EmpiricalDenoiser") is x
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    with pytest.raises(ValueError, match=_fix("x", "cuda:0", "this EmpiricalDenoiser", "cuda:1")):
        require_device(x, "x", "cuda", "this EmpiricalDenoiser")
