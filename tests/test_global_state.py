"""No hidden global state: no public entry point writes the TF32 / matmul-precision flags (not even
for a moment), changes the global RNG or selects a matplotlib backend.

Three witnesses: (1) torch.backends.cuda.matmul / torch.backends.cudnn and
torch.set_float32_matmul_precision are replaced by spies that record every write; (2) a second
thread polls the real flags (through torch._C) for the whole call; (3) denoiser callbacks read
the flags from inside the call. After each entry point the global RNG state and matplotlib's
backend are what they were.
"""

import threading

import matplotlib
import pytest
import torch

import fastgauss
from fastgauss import reference
from fastgauss.data import load_dataset


class _Spy:
    """Reads pass through to the real flag module; writes are recorded (and not applied)."""

    def __init__(self, real, writes):
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_writes", writes)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        self._writes.append((name, value))


def _real_flags():
    return (torch._C._get_cublas_allow_tf32(), torch._C._get_cudnn_allow_tf32(), torch.get_float32_matmul_precision())


class _Watch:
    def __init__(self):
        self.writes, self.seen_inside, self.seen_by_thread = [], set(), set()
        self._stop = threading.Event()

    def record_inside(self):
        self.seen_inside.add(_real_flags())

    def poll(self):
        while not self._stop.is_set():
            self.seen_by_thread.add(_real_flags())


@pytest.fixture
def watch(monkeypatch):
    w = _Watch()
    before_flags, before_rng, before_backend = _real_flags(), torch.get_rng_state(), matplotlib.get_backend()
    monkeypatch.setattr(torch.backends.cuda, "matmul", _Spy(torch.backends.cuda.matmul, w.writes))
    monkeypatch.setattr(torch.backends, "cudnn", _Spy(torch.backends.cudnn, w.writes))
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda *a: w.writes.append(("precision", a)))
    thread = threading.Thread(target=w.poll, daemon=True)
    matplotlib.use("svg")  # a backend the user chose, not fastgauss's (put back below)
    chosen = matplotlib.get_backend()
    thread.start()
    try:
        yield w
    finally:
        w._stop.set()
        thread.join()
        backend_after = matplotlib.get_backend()
        matplotlib.use(before_backend)
    assert w.writes == [], f"flags written during the call: {w.writes}"
    assert w.seen_by_thread <= {before_flags} and w.seen_inside <= {before_flags}
    assert torch.equal(torch.get_rng_state(), before_rng), "the global RNG state changed"
    assert backend_after == chosen, f"matplotlib backend changed from {chosen} to {backend_after}"
    assert matplotlib.get_backend() == before_backend


def _gaussian(d=16, n=200, seed=0):
    data = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    return data, fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))


def _callback(den, watch):
    def call(x, sigma):
        watch.record_inside()
        return den(x, sigma)
    return call


def _gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_gaussian_operator_route(watch):
    data, g = _gaussian()
    x = torch.randn(256, 16, generator=_gen())
    assert g._operator_pays(256, 0.5, None)  # the shared-sigma route that used to write allow_tf32
    for precision in (None, "ieee", "tf32"):
        out = g(x, 0.5, precision=precision)
        ref = reference.gaussian_denoiser(x.double(), torch.full((256,), 0.5), g.mean.double(), g.eigvals.double(),
                                                    g.eigvecs.double())
        assert (out.double() - ref).abs().max() < 1e-5
    fastgauss.gaussian_denoise(x, 0.5, g.mean, g.eigvals, g.eigvecs)
    g.jvp(x[:4], 0.5, torch.randn(3, 4, 16, generator=_gen()))
    g.sample(x[:4], fastgauss.edm_sigmas(5))


def test_empirical_and_neighbors(watch):
    data = torch.randn(100, 8, generator=_gen())
    den = fastgauss.EmpiricalDenoiser(data)
    x = data[:4] + 0.1 * torch.randn(4, 8, generator=_gen(2))
    den(x, 0.5)
    den.jvp(x, 0.5, torch.randn(2, 4, 8, generator=_gen(3)))
    fastgauss.nearest_neighbors(x, data, k=2)
    fastgauss.gl_score(x, data)
    fastgauss.memorization_ratio(x, data)
    fastgauss.Moments.from_loader(data.split(30), progress=False)


def test_diagnostics_read_flags_from_inside(watch):
    data, g = _gaussian(d=16)
    net = _callback(g, watch)
    sigmas = [0.1, 1.0]
    fastgauss.linearity_score(net, data, sigmas, n=8, generator=_gen())
    fastgauss.denoiser_rmse(net, g, data, sigmas, n=16, generator=_gen())
    fastgauss.distill_linear(net, data, sigmas, generator=_gen())
    fastgauss.jvp(net, data[:2], 0.5, torch.randn(3, 2, 16, generator=_gen()))
    fastgauss.jacobian_spectrum(net, data[0], 0.5, k=2, generator=_gen())
    fastgauss.sample_euler(net, torch.randn(2, 16, generator=_gen()), fastgauss.edm_sigmas(4))
    assert watch.seen_inside  # the callback ran inside the calls


def test_training_and_reports(watch, tmp_path):
    from fastgauss._core.plots import plot_training_curve
    from fastgauss.cli.demo import _plot_curves
    from fastgauss.cli.reproduce import _plot
    from fastgauss.diagnostics.spectrum import plot_spectrum
    from fastgauss.edm.train import TrainConfig, Trainer

    digits = load_dataset("digits")
    config = TrainConfig(n=16, width=8, steps=2, batch_size=8, warmup=1, eval_every=2, eval_sigmas=(0.5, 1.0),
                         eval_samples=4, out=str(tmp_path / "run"))
    trainer = Trainer(config, digits)  # used to call torch.manual_seed
    record = trainer.run(progress=False)[-1]
    v = fastgauss.verdict(memorization_ratio=record["memorization_ratio"], gl_score=record["gl_score"],
                          gl_score_gaussian=record["gl_score_gaussian"])
    plot_training_curve(tmp_path / "curve.png", [record])
    model = {"n": 16, "sigma": record["sigma"], "rmse_gaussian": record["rmse_gaussian"],
             "rmse_empirical": record["rmse_empirical"], "linearity": record["linearity"], "verdict": v.to_dict()}
    _plot_curves(tmp_path / "distances.png", {"models": {"memorizing": model, "generalizing": model}})
    row = {"n": 16, "width": 8, "steps": 2, "regime": v.label, "rmse_gaussian_mid": 0.5, "rmse_empirical_mid": 0.4}
    _plot(tmp_path / "sweep.png", [row, {**row, "n": 64}])
    m = fastgauss.Moments().update(digits)
    vals, vecs = m.eigh()
    plot_spectrum(tmp_path / "spectrum.png", vals, m.mean, vecs, m.feature_shape, "digits")
    for name in ("curve.png", "distances.png", "sweep.png", "spectrum.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_trainer_weights_equal_the_seeded_global_rng_ones():
    """The local generator reproduces what torch.manual_seed(seed) + building the UNet gave, so the
    demo's figures stand."""
    from fastgauss.edm.train import _build_network
    from fastgauss.edm.unet import SmallUNet

    for channels, width, seed in ((1, 8, 0), (3, 32, 5)):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            old = SmallUNet(channels=channels, width=width).state_dict()
        new = _build_network(channels, width, seed).state_dict()
        assert old.keys() == new.keys()
        for key in old:
            assert torch.equal(old[key], new[key]), key
