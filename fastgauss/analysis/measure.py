"""The measurements of ``fastgauss.analyze``: statistics, reference denoisers, distances, linearity,
Jacobian alignment, samples from fixed latents and their memorization, each timed as a part."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .._core.seeds import seeded_generator
from ..ops.empirical import EmpiricalDenoiser
from ..ops.gaussian.module import GaussianDenoiser
from ..diagnostics.jacobian import jacobian_spectrum, subspace_alignment
from ..diagnostics.linearity import denoiser_rmse, linearity_score
from ..ops.neighbors.op import gl_score, memorization_ratio, nearest_neighbors
from ..edm.sampling import edm_sigmas, sample_euler
from .stats_cache import cached_stats


#: Default noise levels (those inside the model's [sigma_min, sigma_max] are used).
DEFAULT_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


#: Parts whose time counts as fastgauss's own measurements (minus the network's share). The Jacobian
#: part is reported apart: it is the network's J v and J^T u products (torch.func), whose reverse
#: passes run outside the network's forward call; its own linear algebra (QR of [d, k + 6]) is negligible.
MEASUREMENT_PARTS = ("statistics", "references", "distances", "linearity", "sampling", "memorization")


#: Sample sets scored by GL score and memorization ratio: the model's, D_G's exact flow, D_M's, D_G through
#: the model's own sampler (the verdict's generalizing reference), N(mu, Sigma) from the same latents.
SAMPLE_SETS = ("model", "gaussian", "memorizing", "gaussian_euler", "fresh_gaussian")


def probe(model, data: torch.Tensor, sigma: float, feature_shape) -> None:
    """One small call before the long parts: a mismatch of shapes or labels fails here, clearly."""
    shape = tuple(data.shape[1:])
    if feature_shape is not None and tuple(feature_shape) != shape:
        raise ValueError(f"dataset: its samples have shape {shape} but the model takes {tuple(feature_shape)}")
    if callable(getattr(model.model, "check_data", None)):
        model.model.check_data(data, "dataset")  # adapters name both shapes, and refuse pixels for latent models
    x = data[:2]
    try:
        with torch.no_grad():
            out = model(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
    except TypeError as exc:
        if "class_labels" in str(exc):
            raise ValueError("labels: the model takes no class labels") from exc
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"dataset: samples of shape {shape} do not fit the model ({first})") from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"dataset: the model returned {got} for samples of shape {tuple(x.shape)}")


_OVERSAMPLE = 6


def jacobian_iterations(eigvals: torch.Tensor, sigma: float, k: int, oversample: int, *, target: float = 0.01,
                        most: int = 16) -> tuple[int, bool]:
    """Power iterations for the randomized SVD to resolve the top-k subspace of the Gaussian's
    Jacobian U diag(w) U^T (w = lambda / (lambda + sigma^2)) to ``target``, at most ``most``.

    The error shrinks as (w_{k+p} / w_k)^(2 q + 1) for q iterations and p = oversample; where the
    data's spectrum is flat at this sigma (small sigma: every w near 1) the top-k subspace is
    ill-defined and no affordable q resolves it: (most, False).
    """
    lam = eigvals.double().clamp_min(0)
    w = lam / (lam + sigma**2)
    if k + oversample >= w.numel() or w[k - 1] <= 0:
        return 2, True
    ratio = float(w[k + oversample] / w[k - 1])
    if ratio <= target:
        return 2, True
    needed = math.ceil((math.log(target) / math.log(ratio) - 1) / 2)
    return (max(2, needed), True) if needed <= most else (most, False)


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of sqrt(|a - b|^2 / d)."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    return float(((a - b).norm(dim=1) / math.sqrt(a.shape[1])).mean())


def measure(timed, data, grid, *, part, samples, steps, batch_size, seed, n_eval, n_pairs, jacobian_k,
             jacobian_points, progress, source, cache_dir, sigma_range):
    n, d = data.shape[0], math.prod(data.shape[1:])
    with part("statistics"):
        stats = cached_stats(data, cache_dir=cache_dir, source=source, device=data.device,
                             batch_size=max(batch_size, 1024), progress=progress)
    with part("references"):
        gaussian = GaussianDenoiser(stats.mean, stats.eigvals, stats.eigvecs,
                                    feature_shape=tuple(data.shape[1:])).to(data.device)
        empirical = EmpiricalDenoiser(data)
    table = {"sigma": grid}
    with part("distances"):
        count = min(n_eval, n)
        names = ("rmse_gaussian", "rmse_empirical")
        for key in (*names, *(k + "_spread" for k in names)):
            table[key] = []
        for sigma in tqdm(grid, desc="distances to D_G, D_M", disable=not progress, unit="sigma"):
            # The same generator state at every level: the same images and noise, as one call would use.
            res = denoiser_rmse(timed, {"gaussian": gaussian, "empirical": empirical}, data, [sigma], n=count,
                                generator=seeded_generator(seed, 0, 0), batch_size=batch_size)
            for ref in ("gaussian", "empirical"):
                table[f"rmse_{ref}"].append(float(res[ref].value[0]))
                table[f"rmse_{ref}_spread"].append(float(res[ref].spread[0]))
    pairs = max(1, min(n_pairs, n // 2))
    with part("linearity"):
        table["linearity"] = []
        for sigma in tqdm(grid, desc="linearity", disable=not progress, unit="sigma"):
            res = linearity_score(timed, data, [sigma], n=pairs, generator=seeded_generator(seed, 0, 1),
                                  batch_size=batch_size)
            table["linearity"].append(float(res.value[0]))
    k = min(jacobian_k, d, n - 1)
    with part("jacobian"):
        table["jacobian_alignment"], table["jacobian_iters"], table["jacobian_resolved"] = [], [], []
        if k >= 1:
            top = stats.eigvecs[:, :k].to(data.device)  # moved once, explicitly (the library never moves)
            picks = torch.randperm(n, generator=seeded_generator(seed, 0, 2))[:jacobian_points].to(data.device)
            eps = torch.randn((len(picks), *data.shape[1:]), generator=seeded_generator(seed, 0, 3)).to(data)
            bar = tqdm(total=len(grid) * len(picks), desc="Jacobian alignment", disable=not progress, unit="point")
            for sigma in grid:
                iters, resolved = jacobian_iterations(stats.eigvals, sigma, k, _OVERSAMPLE)
                cosines = []
                for j, i in enumerate(picks.tolist()):
                    x = data[i] + sigma * eps[j]  # one input [*feature_shape], as jacobian_spectrum takes it
                    left, _, _ = jacobian_spectrum(timed, x, sigma, k, oversample=_OVERSAMPLE, iters=iters,
                                                   generator=seeded_generator(seed, 0, 4 + j))
                    cosines.append(float(subspace_alignment(left.detach(), top).mean()))
                    bar.update(1)
                table["jacobian_alignment"].append(sum(cosines) / len(cosines))
                table["jacobian_iters"].append(iters)
                table["jacobian_resolved"].append(resolved)
            bar.close()
    with part("sampling"), torch.no_grad():
        schedule = edm_sigmas(steps, sigma_min=max(sigma_range[0], 0.002), sigma_max=min(sigma_range[1], 80.0))
        latents = torch.randn((samples, *data.shape[1:]), generator=seeded_generator(seed, 0, 5)).to(data)
        bar = tqdm(total=2 * steps * samples, desc="sampling: model, memorizing", disable=not progress, unit="img")
        ends = {"model": [], "memorizing": []}
        for chunk in latents.split(batch_size):
            for name, den in (("model", timed), ("memorizing", empirical)):
                ends[name].append(sample_euler(den, chunk, schedule))
                bar.update(steps * chunk.shape[0])
        bar.close()
        ends = {name: torch.cat(parts) for name, parts in ends.items()}
        ends["gaussian"] = gaussian.sample(latents, schedule)
        ends["gaussian_euler"] = torch.cat([sample_euler(gaussian, c, schedule) for c in latents.split(batch_size)])
        # N(mu, Sigma) samples driven by the same latents (mu + U sqrt(lambda) U^T z): a paired reference,
        # so the GL comparison is not swamped by sampling noise.
        u = stats.eigvecs.to(data.device)
        z = latents.reshape(samples, d).double() @ u
        fresh = stats.mean.to(data.device) + (z * stats.eigvals.to(data.device).clamp_min(0).sqrt()) @ u.T
        ends["fresh_gaussian"] = fresh.to(data.dtype).reshape(samples, *data.shape[1:])
    with part("memorization"):
        memo = {"count": samples, "steps": steps, "sampler": "euler", "schedule": schedule.tolist(),
                "flow_distance_gaussian": _rmse(ends["model"], ends["gaussian"]),
                "flow_distance_memorizing": _rmse(ends["model"], ends["memorizing"]),
                # the same sampler run on D_G itself: the discretisation error, the floor of the first figure
                "flow_distance_floor": _rmse(ends["gaussian_euler"], ends["gaussian"])}
        for name in tqdm(SAMPLE_SETS, desc="nearest neighbours",
                         disable=not progress, unit="set"):
            memo[f"gl_score_{name}"] = gl_score(ends[name], data)
            memo[f"memorization_ratio_{name}"] = memorization_ratio(ends[name], data)
        memo["gl_score"], memo["memorization_ratio"] = memo["gl_score_model"], memo["memorization_ratio_model"]
        ends["nn_index"] = nearest_neighbors(ends["model"][:8], data, k=min(3, n))[1]
    summary = {"per_sigma": table, "samples": memo, "_pairs": pairs, "_k": k,
               "_data": {"stats_cache": stats.status, "stats_cache_file": None if stats.path is None else
                         str(stats.path), "total_variance": float(stats.eigvals.sum()),
                         "top_eigenvalues": stats.eigvals[:10].tolist()}}
    return summary, ends
