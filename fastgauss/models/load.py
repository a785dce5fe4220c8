"""``load_denoiser``: a model on disk (diffusers folder, EDM/EDM2 snapshot, fastgauss checkpoint) as a denoiser."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from ._base import Adapter

PICKLE_SUFFIXES = (".pkl", ".pickle")
DIFFUSERS_LAYOUTS = "model_index.json, unet/ + scheduler/, or config.json + scheduler_config.json"


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"path: {path} is not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"path: {path} holds no JSON object")
    return value


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError("loading a diffusers model needs diffusers: pip install 'fastgauss[diffusers]'") from None
    return diffusers


def _diffusers_class(name: str | None, default: str, what: str):
    diffusers = _diffusers()
    cls = getattr(diffusers, name or default, None)
    if cls is None or not hasattr(cls, "from_pretrained") and not hasattr(cls, "from_config"):
        raise ValueError(f"path: {what} names class {name!r}, which this diffusers ({diffusers.__version__}) lacks")
    return cls


def _diffusers_layout(folder: Path):
    """(unet folder, scheduler folder, model_index or {}) of a diffusers folder, or None."""
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        unet_name = "unet" if "unet" in index else next((k for k in ("transformer", "model") if k in index), None)
        if unet_name is None or "scheduler" not in index:
            raise ValueError(f"path: {folder}/model_index.json lists no unet and scheduler (has "
                             f"{', '.join(k for k in index if not k.startswith('_')) or 'nothing'})")
        return folder / unet_name, folder / "scheduler", index, unet_name
    if (folder / "unet").is_dir() and (folder / "scheduler").is_dir():
        return folder / "unet", folder / "scheduler", {}, "unet"
    if (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file():
        return folder, folder, {}, "unet"
    return None


def _index_class(index: dict, key: str):
    entry = index.get(key)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None


def load_diffusers_folder(folder: Path, *, device=None, dtype=None, max_batch=None) -> Adapter:
    """A diffusers pipeline or model folder as a :class:`DiffusersDenoiser`."""
    from .diffusers import from_diffusers

    unet_dir, sched_dir, index, unet_key = _diffusers_layout(folder)
    unet_cfg = _read_json(unet_dir / "config.json") if (unet_dir / "config.json").is_file() else {}
    sched_file = sched_dir / "scheduler_config.json"
    if not sched_file.is_file():
        raise ValueError(f"path: {sched_dir} has no scheduler_config.json")
    sched_cfg = _read_json(sched_file)
    unet_cls = _diffusers_class(_index_class(index, unet_key) or unet_cfg.get("_class_name"), "UNet2DModel", "the unet")
    sched_cls = _diffusers_class(_index_class(index, "scheduler") or sched_cfg.get("_class_name"), "DDPMScheduler",
                                 "the scheduler")
    try:
        unet = unet_cls.from_pretrained(unet_dir, local_files_only=True)
        scheduler = sched_cls.from_pretrained(sched_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"path: {folder} could not be loaded as a diffusers model ({exc})") from None
    if device is not None or dtype is not None:
        unet = unet.to(device=device, dtype=dtype)
    latent = any(k in index for k in ("vae", "vqvae"))
    return from_diffusers(unet, scheduler, max_batch=max_batch, latent=latent)


def load_edm_snapshot(path: Path, *, device=None, dtype=None, max_batch=None) -> Adapter:
    """An NVlabs EDM / EDM2 snapshot pickle (runs the code it embeds) as an :class:`EDMNetDenoiser`."""
    from ._persistence import load_snapshot
    from .edm import from_edm

    try:
        data = load_snapshot(path)
    except (OSError, EOFError, ValueError, AttributeError, ImportError, TypeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"path: {path} is not a readable EDM snapshot ({type(exc).__name__}: {exc})") from None
    net, encoder = data, None
    if isinstance(data, dict):
        net = next((data[k] for k in ("ema", "net", "model") if k in data), None)
        encoder = data.get("encoder")
        if net is None:
            raise ValueError(f"path: {path} holds a dict without 'ema' (keys: {', '.join(map(str, data))})")
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"path: {path} holds {type(net).__name__}, not a network")
    net = net.to(device=device) if device is not None else net
    if dtype is not None:
        net = net.to(dtype=dtype)
    latent = encoder is not None and "vae" in type(encoder).__name__.lower()
    return from_edm(net, max_batch=max_batch, latent=latent)


def load_fastgauss_checkpoint(path: Path, *, device=None, dtype=None, max_batch=None) -> Adapter:
    """A ``fastgauss train`` checkpoint (its EMA network) as an :class:`EDMNetDenoiser`."""
    from ..edm.precond import EDMDenoiser
    from ..edm.train import load_checkpoint
    from ..edm.unet import SmallUNet
    from .edm import EDM_SIGMA_MAX, EDM_SIGMA_MIN, from_edm

    state = load_checkpoint(path)
    ema, config = state["ema"], state["config"]
    channels = int(ema["network.inp.weight"].shape[1])
    net = EDMDenoiser(SmallUNet(channels=channels, width=int(config["width"])))
    net.load_state_dict(ema)
    net = net.to(device=device, dtype=dtype)
    feature_shape = None
    try:  # the bundled datasets are cheap to look at; a path may be gone
        from ..data import load_dataset

        feature_shape = tuple(load_dataset(config["dataset"], limit=1).shape[1:])
    except Exception:  # noqa: BLE001  the shape is a convenience, not needed to run the model
        feature_shape = None
    return from_edm(net, sigma_min=EDM_SIGMA_MIN, sigma_max=EDM_SIGMA_MAX, feature_shape=feature_shape,
                    max_batch=max_batch)


def _is_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and head[1] <= 5 and not _is_zip(path)


def _is_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def load_denoiser(path, *, trust_code: bool = False, device=None, dtype: torch.dtype | None = None,
                  max_batch: int | None = None) -> Adapter:
    """A model on disk as a denoiser D(x; sigma) (an :class:`Adapter`), whatever wrote it.

    path: one of
        * a diffusers folder: a pipeline (model_index.json), unet/ + scheduler/, or a flat model
          folder with config.json + scheduler_config.json (what ``save_pretrained`` of a UNet
          and of its scheduler into one folder writes); a pipeline with a vae/vqvae is a latent model;
        * an NVlabs EDM / EDM2 snapshot ``.pkl``: these pickles embed and execute their own source
          code, so they load only with ``trust_code=True`` (no NVlabs repository needed);
        * a ``fastgauss train`` checkpoint (checkpoint.pt, or its run folder): the EMA network.
    device: where the network goes (default: where it was saved to load, the CPU).
    dtype: casts the network's weights (e.g. torch.float16 on a GPU); outputs stay float32.
    max_batch: the most samples per network call.

    Returns the adapter with ``sigma_min``, ``sigma_max``, ``feature_shape``, ``label_dim``, ``latent``.
    Raises ValueError naming ``path`` for a missing file, a folder that is none of these, or a
    pickle without ``trust_code``; ``scheduler`` for an unknown prediction_type.

    Example:
        >>> import fastgauss
        >>> den = fastgauss.load_denoiser("my-ddpm-digits")  # doctest: +SKIP
        >>> den(x, 0.5)  # x: [B, *den.feature_shape]                 # doctest: +SKIP
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file or folder path, got {type(path).__name__}")
    if not isinstance(trust_code, bool):
        raise TypeError(f"trust_code: expected True or False, got {trust_code!r}")
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path: {path}: no such file or folder")
    kwargs = {"device": device, "dtype": dtype, "max_batch": max_batch}
    if path.is_dir():
        if _diffusers_layout(path) is not None:
            return load_diffusers_folder(path, **kwargs)
        if (path / "checkpoint.pt").is_file():
            return load_fastgauss_checkpoint(path / "checkpoint.pt", **kwargs)
        raise ValueError(f"path: {path} is neither a diffusers model folder ({DIFFUSERS_LAYOUTS}) nor a fastgauss "
                         f"run folder (checkpoint.pt)")
    if _is_pickle(path):
        if not trust_code:
            raise ValueError(f"path: {path} is a pickle, which runs the code it contains when loaded; pass "
                             f"trust_code=True (--trust-code) only if you trust where it came from")
        return load_edm_snapshot(path, **kwargs)
    return load_fastgauss_checkpoint(path, **kwargs)
