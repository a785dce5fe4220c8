"""``fastgauss.analyze``: has a diffusion model learned the Gaussian structure of its data, or memorized it?

One call measures any denoiser (the protocol ``D(x, sigma)``; a path goes through
``fastgauss.load_denoiser``) against the two reference denoisers of its training data: the
Gaussian denoiser D_G of N(mu, Sigma) and the memorizing (empirical) denoiser D_M. Per noise
level: RMSE to each, linearity, and the alignment of the Jacobian's top singular vectors with
the data's top eigenvectors. From fixed latents: samples of the model, of D_G (closed form) and
of D_M, their flow distances, the memorization ratio and GL score (beside the GL score of fresh
N(mu, Sigma) samples), and the verdict of ``fastgauss.verdict``. The report folder holds
summary.json, summary.md and PNGs; every part is timed, with the time spent inside the network
kept apart from fastgauss's own.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._core.arrays import as_float, as_tensor, inspectable
from ..data import dataset_names, load_dataset
from .._core.sigma import level_list
from ..edm.sampling import edm_sigmas
from .measure import DEFAULT_SIGMAS, SAMPLE_SETS, measure, probe
from .report import markdown, timing_summary, verdict_dict, verdict_of, write_figures


@dataclass
class Analysis:
    """What ``analyze`` found: ``summary`` (the dict written to summary.json), ``verdict`` (the
    Verdict ``fastgauss.verdict`` returned: ``.label``, the evidence, ``to_dict()``),
    ``out`` (the report folder or None) and ``samples`` (end points [B, *feature_shape] from the
    same latents: "model", "gaussian" (exact flow), "memorizing", "gaussian_euler" (D_G through the
    model's sampler) and "fresh_gaussian" (mu + U sqrt(lambda) U^T z)).

    >>> import torch, fastgauss
    >>> data = torch.randn(200, 1, 4, 4) * 0.3
    >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
    >>> report = fastgauss.analyze(g, data, out=None, samples=16, progress=False)
    >>> report.label, sorted(report.samples)
    ('generalizes', ['fresh_gaussian', 'gaussian', 'gaussian_euler', 'memorizing', 'model'])
    >>> str(report).splitlines()[0]
    '# fastgauss analyze'
    """

    summary: dict
    verdict: object
    out: Path | None
    samples: dict = field(repr=False, default_factory=dict)

    @property
    def label(self) -> str | None:
        return getattr(self.verdict, "label", None)

    def __str__(self) -> str:
        return markdown(self.summary)


class _TimedDenoiser:
    """Calls the model and adds up the seconds spent inside it: plain forward passes apart from
    those inside torch.func transforms (the Jacobian's J v and J^T u)."""

    def __init__(self, model, label=None):
        self.model, self.label = model, label
        self.feature_shape = getattr(model, "feature_shape", None)
        self.forward_seconds = self.transform_seconds = 0.0
        self.forward_images = 0

    def __call__(self, x, sigma):
        cuda = x.is_cuda
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        out = self.model(x, sigma) if self.label is None else self.model(x, sigma, class_labels=self.label)
        if cuda:
            torch.cuda.synchronize(x.device)
        spent = time.perf_counter() - start
        if inspectable(x):
            self.forward_seconds += spent
            self.forward_images += x.shape[0]
        else:
            self.transform_seconds += spent
        return out

    @property
    def seconds(self) -> float:
        return self.forward_seconds + self.transform_seconds


def _load_model(path: Path, *, trust_code: bool, device, dtype):
    """A denoiser from a path through fastgauss.load_denoiser; its errors name ``model``."""
    from ..models import load_denoiser

    try:
        return load_denoiser(path, trust_code=trust_code, device=device, dtype=dtype)
    except ValueError as exc:
        raise ValueError(f"model: {str(exc).removeprefix('path: ')}") from None


def _load_data(dataset, scale):
    """(data [N, *feature_shape] float32, file or folder source or None, a name for the report)."""
    if isinstance(dataset, (str, os.PathLike)):
        data = load_dataset(dataset, scale=scale)
        bundled = isinstance(dataset, str) and dataset in dataset_names()
        return data, (None if bundled else Path(os.fspath(dataset))), str(dataset)
    data = as_float(as_tensor(dataset, "dataset"))
    return data, None, f"tensor {tuple(data.shape)}"


def _model_device(model) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return None


def _is_conditional(model) -> bool:
    """A class-conditional model without default labels (adapters: label_dim != 0, class_labels None)."""
    return bool(getattr(model, "label_dim", 0)) and getattr(model, "class_labels", None) is None


def sigma_grid(sigma_min: float, sigma_max: float, sigmas=None) -> list[float]:
    """The analysis grid: ``sigmas`` (each inside [sigma_min, sigma_max]) or the levels of
    DEFAULT_SIGMAS inside the range (8 log-spaced levels across it when fewer than 3 are)."""
    if sigmas is not None:
        grid = level_list(sigmas).tolist()
        outside = [s for s in grid if not sigma_min <= s <= sigma_max]
        if outside:
            raise ValueError(f"sigmas: {outside} lie outside the model's range [{sigma_min:g}, {sigma_max:g}]")
        return grid
    grid = [s for s in DEFAULT_SIGMAS if sigma_min <= s <= sigma_max]
    if len(grid) >= 3:
        return grid
    lo, hi = math.log(sigma_min), math.log(min(sigma_max, 80.0))
    return [math.exp(lo + (hi - lo) * i / 7) for i in range(8)]


def _check_count(name: str, value, low: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return value


def analyze(model, dataset, *, out="fastgauss-out/analyze", sigmas=None, samples: int = 64, steps: int = 10,
            batch_size: int = 256, labels: int | None = None, device=None, dtype=None, seed: int = 0,
            trust_code: bool = False, cache_dir=None, n_eval: int = 128, n_pairs: int = 32,
            jacobian_k: int = 4, jacobian_points: int = 1, scale: str | None = None,
            progress: bool = True) -> Analysis:
    """Measure a denoiser against the Gaussian and memorizing denoisers of its training data.

    model: a denoiser ``D(x, sigma) -> [B, *feature_shape]`` (an nn.Module is put in eval mode
        for the run and, with ``device``, moved there), or a path for ``fastgauss.load_denoiser``
        (a diffusers folder, an EDM pickle with ``trust_code=True``, a fastgauss checkpoint).
        Its ``sigma_min``/``sigma_max`` attributes (default 0.002 and 80) bound the grid.
    dataset: its training data, [N, *feature_shape] (N >= 2) in [-1, 1], or a bundled name or a
        path for ``fastgauss.data.load_dataset`` (with its ``scale=`` for float arrays).
    out: report folder (summary.json, summary.md, distances.png, samples.png, neighbors.png);
        None writes nothing. cache_dir: where the data statistics are cached (default: a
        ``stats-cache`` folder beside ``out``; None with out=None: no cache).
    sigmas: noise levels (default: DEFAULT_SIGMAS inside the model's range). samples: latents
        for the samplers (``steps`` Euler steps of edm_sigmas within the model's range).
    labels: one class label for every call of a class-conditional model (pass the images of
        that class as ``dataset``). n_eval: noisy inputs per level for the RMSE; n_pairs: pairs
        for linearity; jacobian_k: top singular vectors compared with the data's top
        eigenvectors at ``jacobian_points`` inputs per level (0 skips the Jacobian).
    Returns an Analysis (summary dict, verdict, folder, sample end points).

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(200, 1, 4, 4) * 0.3
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> report = fastgauss.analyze(g, data, out=None, samples=16, progress=False)
        >>> report.summary["per_sigma"]["rmse_gaussian"][0] < 1e-5
        True
    """
    for name, value, low in (("samples", samples, 2), ("steps", steps, 1), ("batch_size", batch_size, 1),
                             ("n_eval", n_eval, 1), ("n_pairs", n_pairs, 1), ("jacobian_k", jacobian_k, 0),
                             ("jacobian_points", jacobian_points, 1), ("seed", seed, 0)):
        _check_count(name, value, low)
    if labels is not None and not (isinstance(labels, int) and not isinstance(labels, bool) and labels >= 0):
        raise ValueError(f"labels: expected one class index >= 0 for every call, got {labels!r}")
    timings: dict[str, dict] = {}
    timed: _TimedDenoiser | None = None

    @contextmanager
    def part(name: str):
        start, net = time.perf_counter(), (timed.seconds if timed else 0.0)
        yield
        timings[name] = {"seconds": time.perf_counter() - start,
                         "network_seconds": (timed.seconds if timed else 0.0) - net}

    with part("model"):
        if isinstance(model, (str, os.PathLike)):
            model_name = os.fspath(model)
            model = _load_model(Path(model_name), trust_code=trust_code, device=device, dtype=dtype)
        elif callable(model):
            model_name = type(model).__name__
            if device is not None and isinstance(model, torch.nn.Module):
                model.to(device)
        else:
            raise TypeError(f"model: expected a denoiser D(x, sigma) or a path, got {type(model).__name__}")
    with part("data"):
        data, source, data_name = _load_data(dataset, scale)
        if data.dim() < 2 or data.shape[0] < 2:
            raise ValueError(f"dataset: expected [N, *feature_shape] with N >= 2, got shape {tuple(data.shape)}")
        device = torch.device(device) if device is not None else (_model_device(model) or data.device)
        data = data.to(device)
    if _is_conditional(model) and labels is None:
        raise ValueError("labels: the model is class-conditional; pass the class of the data (labels=, --labels)")
    sigma_min = float(getattr(model, "sigma_min", 0.002))
    sigma_max = float(getattr(model, "sigma_max", 80.0))
    grid = sigma_grid(sigma_min, sigma_max, sigmas)
    was_training = model.training if isinstance(model, torch.nn.Module) else None
    if was_training:
        model.eval()
    timed = _TimedDenoiser(model, labels)
    try:
        probe(timed, data, grid[len(grid) // 2], getattr(model, "feature_shape", None))
        result = measure(timed, data, grid, part=part, samples=samples, steps=steps, batch_size=batch_size,
                          seed=seed, n_eval=n_eval, n_pairs=n_pairs, jacobian_k=jacobian_k,
                          jacobian_points=jacobian_points, progress=progress, source=source,
                          cache_dir=_cache_dir(out, cache_dir), sigma_range=(sigma_min, sigma_max))
    finally:
        if was_training:
            model.train()
    summary, end_points = result
    summary["model"] = {"source": model_name, "sigma_min": sigma_min, "sigma_max": sigma_max, "labels": labels}
    summary["data"] = {"source": data_name, "count": data.shape[0], "feature_shape": list(data.shape[1:]),
                       **summary.pop("_data")}
    summary["config"] = {"sigmas": grid, "samples": samples, "steps": steps, "batch_size": batch_size,
                         "seed": seed, "n_eval": min(n_eval, data.shape[0]), "n_pairs": summary.pop("_pairs"),
                         "jacobian_k": summary.pop("_k"), "jacobian_points": jacobian_points,
                         "device": str(device)}
    with part("report"):
        verdict = verdict_of(summary)
        summary["verdict"] = verdict_dict(verdict)
        if out is not None:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            write_figures(folder, summary, end_points, data)
    summary["timings"] = timing_summary(timings, timed)
    if out is not None:
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
        (folder / "summary.md").write_text(markdown(summary))
    return Analysis(summary, verdict, None if out is None else folder,
                    {k: v for k, v in end_points.items() if k in SAMPLE_SETS})


def _cache_dir(out, cache_dir):
    if cache_dir is not None:
        return Path(cache_dir)
    return None if out is None else Path(out).resolve().parent / "stats-cache"
