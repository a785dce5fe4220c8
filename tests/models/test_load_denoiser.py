"""load_denoiser: diffusers folders (three layouts), NVlabs-style snapshot pickles, fastgauss checkpoints, bad paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastgauss

REPO = Path(__file__).resolve().parents[2]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ EDM snapshot pickles
# A stand-in for the NVlabs utilities *on the writing side only*, written for this test from
# the format: a persistent class pickles as _reconstruct_persistent_obj(meta) with its
# module's source inside meta. The reading side (fresh process) has none of these files.
WRITER_FILES = {
    "torch_utils/__init__.py": "",
    "torch_utils/misc.py": """
        import torch
        def const_like(ref, value):
            return torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    """,
    "torch_utils/persistence.py": """
        import inspect, sys

        def _reconstruct_persistent_obj(meta):
            raise RuntimeError("the writer never unpickles")

        def persistent_class(cls):
            source = inspect.getsource(sys.modules[cls.__module__])

            class Persistent(cls):
                def __reduce__(self):
                    meta = dict(type="class", version=6, module_src=source, class_name=cls.__name__,
                                state=dict(self.__dict__))
                    return _reconstruct_persistent_obj, (meta,)

            Persistent.__name__ = Persistent.__qualname__ = cls.__name__
            Persistent.__module__ = cls.__module__
            return Persistent
    """,
    "dnnlib/__init__.py": "from .util import EasyDict\n",
    "dnnlib/util.py": "class EasyDict(dict):\n    pass\n",
    "tiny_edm_net.py": """
        import numpy as np
        import torch
        import dnnlib
        from torch_utils import misc, persistence

        @persistence.persistent_class
        class Mixer(torch.nn.Module):
            def __init__(self, d):
                super().__init__()
                self.lin = torch.nn.Linear(d, d)

            def forward(self, h):
                return torch.tanh(self.lin(h))

        @persistence.persistent_class
        class TinyPrecond(torch.nn.Module):
            def __init__(self, img_resolution, img_channels, label_dim=0, sigma_min=0, sigma_max=float("inf"),
                         sigma_data=0.5):
                super().__init__()
                self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
                self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
                self.mixer = Mixer(img_channels * img_resolution ** 2)
                self.kwargs = dnnlib.EasyDict(img_resolution=img_resolution)

            def forward(self, x, sigma, class_labels=None, force_fp32=False):
                sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
                sd = misc.const_like(x, self.sigma_data)
                c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
                c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
                f = self.mixer(x.reshape(x.shape[0], -1)).reshape(x.shape)
                return c_skip * x + c_out * f * float(np.sqrt(1.0))

        @persistence.persistent_class
        class StabilityVAEEncoder:
            def __init__(self):
                self.vae_name = "stand-in"
    """,
}

WRITE = """
import pickle, sys, torch, dnnlib
from tiny_edm_net import TinyPrecond, StabilityVAEEncoder
torch.manual_seed(0)
net = TinyPrecond(img_resolution=4, img_channels=2, sigma_min=0.002, sigma_max=80.0).eval()
x = torch.randn(3, 2, 4, 4)
sigma = torch.tensor([0.01, 1.0, 40.0])
with torch.no_grad():
    torch.save({"x": x, "sigma": sigma, "d": net(x, sigma)}, sys.argv[1] + "/expected.pt")
with open(sys.argv[1] + "/network-snapshot.pkl", "wb") as f:
    pickle.dump(dict(ema=net, dataset_kwargs=dnnlib.EasyDict(path="digits.zip")), f)
with open(sys.argv[1] + "/latent-snapshot.pkl", "wb") as f:
    pickle.dump(dict(ema=TinyPrecond(img_resolution=4, img_channels=4), encoder=StabilityVAEEncoder()), f)
"""

READ = """
import importlib.util, sys, torch, fastgauss
for name in ("tiny_edm_net", "torch_utils", "dnnlib"):
    assert importlib.util.find_spec(name) is None, name + " must not be importable here"
folder = sys.argv[1]
den = fastgauss.load_denoiser(folder + "/network-snapshot.pkl", trust_code=True)
ref = torch.load(folder + "/expected.pt")
got = den(ref["x"], ref["sigma"])
assert torch.equal(got, ref["d"]), (got - ref["d"]).abs().max()
assert (den.sigma_min, den.sigma_max, den.feature_shape, den.latent) == (0.002, 80.0, (2, 4, 4), False)
assert not any(m.split(".")[0] in ("torch_utils", "dnnlib", "tiny_edm_net") for m in sys.modules)
latent = fastgauss.load_denoiser(folder + "/latent-snapshot.pkl", trust_code=True)
assert latent.latent and latent.feature_shape == (4, 4, 4)
print("loaded", type(den.network).__name__)
"""


def _clean_env(extra_path=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("edm")
    src, out = root / "writer_src", root / "out"
    out.mkdir()
    for name, text in WRITER_FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(textwrap.dedent(text))
    subprocess.run([sys.executable, "-c", WRITE, str(out)], cwd=src, env=_clean_env(src), check=True, timeout=120)
    return out


def test_snapshot_loads_in_a_fresh_process_without_its_source(snapshots):
    run = subprocess.run([sys.executable, "-c", READ, str(snapshots)], cwd=snapshots, env=_clean_env(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "loaded TinyPrecond" in run.stdout


def test_snapshot_refused_without_trust_code(snapshots):
    with pytest.raises(ValueError, match=r"path: .*network-snapshot\.pkl is a pickle.*trust_code=True"):
        fastgauss.load_denoiser(snapshots / "network-snapshot.pkl")
    renamed = snapshots / "snapshot.bin"  # refused by its content, not only by its suffix
    renamed.write_bytes((snapshots / "network-snapshot.pkl").read_bytes())
    with pytest.raises(ValueError, match="trust_code"):
        fastgauss.load_denoiser(renamed)


def test_broken_pickle_is_a_value_error(tmp_path):
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(ValueError, match=r"path: .*broken\.pkl is not a readable EDM snapshot"):
        fastgauss.load_denoiser(bad, trust_code=True)


# ---------------------------------------------------------------------- diffusers folders
try:
    import diffusers
except ImportError:  # the pickle and checkpoint tests above and below run without it
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="diffusers is not installed (pip install .[diffusers])")


@pytest.fixture(scope="module")
def unet_and_scheduler():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2).eval()
    return unet, diffusers.DDPMScheduler(prediction_type="v_prediction")


@needs_diffusers
@pytest.mark.parametrize("layout", ["pipeline", "subfolders", "flat"])
def test_diffusers_layouts(tmp_path, unet_and_scheduler, layout):
    unet, scheduler = unet_and_scheduler
    if layout == "pipeline":
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
        assert (tmp_path / "model_index.json").is_file()
    elif layout == "subfolders":
        unet.save_pretrained(tmp_path / "unet")
        scheduler.save_pretrained(tmp_path / "scheduler")
    else:
        unet.save_pretrained(tmp_path)
        scheduler.save_pretrained(tmp_path)
    den = fastgauss.load_denoiser(tmp_path)
    ref = fastgauss.from_diffusers(unet, scheduler)
    x = torch.randn(2, 1, 8, 8, generator=_gen(0))
    s = torch.tensor([0.05, 4.0])
    assert torch.allclose(den(x, s), ref(x, s), atol=1e-6)
    assert den.prediction_type == "v_prediction" and den.feature_shape == (1, 8, 8) and not den.latent


@needs_diffusers
def test_latent_pipeline_refuses_pixel_data(tmp_path, unet_and_scheduler):
    unet, scheduler = unet_and_scheduler
    unet.save_pretrained(tmp_path / "unet")
    scheduler.save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"], "vqvae": ["diffusers", "VQModel"]}))
    den = fastgauss.load_denoiser(tmp_path)
    assert den.latent
    den.check_data(torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"data: images \[3, 32, 32\] look like pixel data.*latent space"):
        den.check_data(torch.zeros(4, 3, 32, 32))


@needs_diffusers
def test_unknown_prediction_type_in_folder(tmp_path, unet_and_scheduler):
    unet, _ = unet_and_scheduler
    unet.save_pretrained(tmp_path)
    diffusers.DDPMScheduler(prediction_type="flow_matching").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"scheduler: unknown prediction_type 'flow_matching'"):
        fastgauss.load_denoiser(tmp_path)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="path: .*no such file or folder"):
        fastgauss.load_denoiser(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"path: .* is neither a diffusers model folder \(model_index\.json"):
        fastgauss.load_denoiser(tmp_path)
    with pytest.raises(ValueError, match="checkpoint .*notes.txt"):
        fastgauss.load_denoiser(tmp_path / "notes.txt")
    with pytest.raises(TypeError, match="path"):
        fastgauss.load_denoiser(3)
    with pytest.raises(TypeError, match="trust_code"):
        fastgauss.load_denoiser(tmp_path, trust_code="yes")


# ----------------------------------------------------------------- fastgauss checkpoints
def test_fastgauss_checkpoint(tmp_path):
    from fastgauss.edm.train import TrainConfig, Trainer

    trainer = Trainer(TrainConfig(dataset="digits", n=16, width=8, steps=1, batch_size=8, out=str(tmp_path)))
    torch.nn.init.normal_(trainer.ema.model.network.out[-1].weight, std=0.1)  # a non-trivial network
    trainer.save(tmp_path / "checkpoint.pt")
    for path in (tmp_path, tmp_path / "checkpoint.pt"):
        den = fastgauss.load_denoiser(path)
        assert den.feature_shape == (1, 8, 8) and (den.sigma_min, den.sigma_max) == (0.002, 80.0)
        x = torch.randn(3, 1, 8, 8, generator=_gen(1))
        s = torch.tensor([0.01, 0.5, 20.0])
        with torch.no_grad():
            assert torch.equal(den(x, s), trainer.ema.model(x, s))


@needs_diffusers
def test_dtype_casts_the_loaded_network(tmp_path, unet_and_scheduler):
    unet, scheduler = unet_and_scheduler
    unet.save_pretrained(tmp_path)
    scheduler.save_pretrained(tmp_path)
    den = fastgauss.load_denoiser(tmp_path, dtype=torch.bfloat16, max_batch=1)
    assert next(den.network.parameters()).dtype == torch.bfloat16 and den.max_batch == 1
    x = torch.randn(2, 1, 8, 8, generator=_gen(2))
    out, ref = den(x, 0.3), fastgauss.from_diffusers(unet, scheduler)(x, 0.3)
    assert out.dtype == torch.float32 and (out - ref).norm() / ref.norm() < 5e-2
