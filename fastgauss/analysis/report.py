"""The report of ``fastgauss.analyze``: the verdict on the evidence, the timings, summary.md and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._core.plots import image_grid
from ..ops.neighbors.op import gl_score, memorization_ratio
from .measure import MEASUREMENT_PARTS


def verdict_of(summary: dict):
    """fastgauss.verdict on the evidence (the one function demo and reproduce use too)."""
    from ..diagnostics.verdict import verdict

    t, s = summary["per_sigma"], summary["samples"]
    # The generalizing reference is D_G's GL score through the same sampler from the same latents: a
    # perfectly Gaussian model scores exactly that, while 10 Euler steps move samples away from exact
    # N(mu, Sigma) ones (on 3x16x16 synthetic data D_G's Euler samples score 1.14 against 1.00 for
    # fresh ones), which would read as "undertrained". The fresh samples' score is reported beside it.
    return verdict(memorization_ratio=s["memorization_ratio"], gl_score=s["gl_score"],
                   gl_score_gaussian=s["gl_score_gaussian_euler"],
                   rmse_to_empirical=dict(zip(t["sigma"], t["rmse_empirical"])),
                   rmse_to_gaussian=dict(zip(t["sigma"], t["rmse_gaussian"])))


def verdict_dict(verdict) -> dict:
    result = verdict.to_dict()
    result["text"] = str(verdict)
    return json.loads(json.dumps(result, default=float))


def timing_summary(timings: dict, timed: _TimedDenoiser) -> dict:
    own = sum(timings[p]["seconds"] - timings[p]["network_seconds"] for p in MEASUREMENT_PARTS if p in timings)
    return {"parts": timings, "total_seconds": sum(t["seconds"] for t in timings.values()),
            "network_forward_seconds": timed.forward_seconds, "network_forward_images": timed.forward_images,
            "jacobian_seconds": timings.get("jacobian", {}).get("seconds", 0.0), "fastgauss_seconds": own,
            "overhead_vs_forward": own / timed.forward_seconds if timed.forward_seconds > 0 else None}


def markdown(summary: dict) -> str:
    t, s, data, model = summary["per_sigma"], summary["samples"], summary["data"], summary["model"]
    verdict = summary.get("verdict")
    lines = ["# fastgauss analyze", "",
             f"model `{model['source']}` (sigma in [{model['sigma_min']:g}, {model['sigma_max']:g}]"
             + (f", class {model['labels']}" if model.get("labels") is not None else "") + ")",
             f"data `{data['source']}`: {data['count']} samples of shape {tuple(data['feature_shape'])} "
             f"(statistics: {data['stats_cache']})", ""]
    lines += [f"## Verdict: **{verdict['label']}**", "", "```", verdict.get("text", ""), "```", ""]
    lines += ["## Per noise level", "",
              "| sigma | RMSE to D_G | RMSE to D_M | linearity | Jacobian alignment |", "|---|---|---|---|---|"]
    align = [f"{a:.3f}" + ("" if ok else " (unresolved)") for a, ok in
             zip(t["jacobian_alignment"], t["jacobian_resolved"])] or ["not measured"] * len(t["sigma"])
    for row in zip(t["sigma"], t["rmse_gaussian"], t["rmse_empirical"], t["linearity"], align):
        lines.append(f"| {row[0]:g} | {row[1]:.4f} | {row[2]:.4f} | {row[3]:.4f} | {row[4]} |")
    if not all(t["jacobian_resolved"]):
        lines += ["", "(unresolved: the data's spectrum is too flat at that sigma for the top singular subspace "
                  "to be told apart within the iterations allowed)"]
    lines += ["", f"## Samples ({s['count']} from the same latents, {s['steps']} Euler steps)", "",
              "| sampler | GL score | memorization ratio |", "|---|---|---|"]
    for name, label in (("model", "model"), ("gaussian", "Gaussian D_G (closed form)"),
                        ("memorizing", "memorizing D_M"),
                        ("gaussian_euler", "D_G through the same Euler sampler (the verdict's reference)"),
                        ("fresh_gaussian", "N(mu, Sigma) samples from the same latents")):
        lines.append(f"| {label} | {s[f'gl_score_{name}']:.3f} | {s[f'memorization_ratio_{name}']:.3f} |")
    lines += ["", f"flow distance (RMSE of end points): model to D_G {s['flow_distance_gaussian']:.4f}, "
              f"model to D_M {s['flow_distance_memorizing']:.4f}; the same Euler sampler on D_G itself: "
              f"{s['flow_distance_floor']:.4f} (the discretisation error, the floor)", "",
              "![distances](distances.png)", "", "![samples](samples.png)", "", "![neighbours](neighbors.png)", ""]
    timing = summary.get("timings")
    if timing:
        lines += ["## Time", "", "| part | seconds | in the network |", "|---|---|---|"]
        for name, p in timing["parts"].items():
            lines.append(f"| {name} | {p['seconds']:.2f} | {p['network_seconds']:.2f} |")
        ratio = timing["overhead_vs_forward"]
        lines += ["", f"fastgauss's own measurements: {timing['fastgauss_seconds']:.2f} s; the network's forward "
                  f"passes: {timing['network_forward_seconds']:.2f} s"
                  + (f" (ratio {ratio:.1%})" if ratio is not None else "")
                  + f"; the network's Jacobian products (J v, J^T u): {timing['jacobian_seconds']:.2f} s", ""]
    return "\n".join(lines)


def write_figures(folder: Path, summary: dict, ends: dict, data: torch.Tensor) -> None:
    from matplotlib.figure import Figure

    t = summary["per_sigma"]
    fig = Figure(figsize=(14, 4), constrained_layout=True)
    axes = fig.subplots(1, 3)
    axes[0].errorbar(t["sigma"], t["rmse_gaussian"], yerr=t["rmse_gaussian_spread"], marker="o", label="to D_G")
    axes[0].errorbar(t["sigma"], t["rmse_empirical"], yerr=t["rmse_empirical_spread"], marker="s", label="to D_M")
    axes[0].set(xscale="log", xlabel="sigma", ylabel="RMSE", title="distance to the reference denoisers")
    axes[1].plot(t["sigma"], t["linearity"], marker="o")
    axes[1].set(xscale="log", xlabel="sigma", ylabel="|cos|", title="linearity score")
    if t["jacobian_alignment"]:
        axes[2].plot(t["sigma"], t["jacobian_alignment"], marker="o")
    axes[2].set(xscale="log", xlabel="sigma", ylabel="mean cosine", ylim=(0, 1.05),
                title="Jacobian top singular vectors vs data eigenvectors")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(folder / "distances.png", dpi=110)
    if data.dim() != 4:
        return  # flat vectors: no pictures of samples
    count = min(8, ends["model"].shape[0])
    image_grid(folder / "samples.png", {"model": ends["model"][:count], "Gaussian D_G (closed form)":
                                   ends["gaussian"][:count], "memorizing D_M": ends["memorizing"][:count]},
          "samples from the same latents")
    nn = ends["nn_index"]
    rows = {"model samples": ends["model"][:count]}
    for j in range(nn.shape[1]):
        rows[f"nearest training image {j + 1}"] = data[nn[:, j]]
    image_grid(folder / "neighbors.png", rows, "each sample (top) above its nearest training images")
