"""``fastgauss.analyze``: a diffusion model against the Gaussian and memorizing denoisers of its data.

    run          analyze(), Analysis, sigma_grid: loading, validation and the order of the parts
    measure      the measurements, each a timed part (statistics, references, distances, ...)
    report       the verdict on the evidence, the timings, summary.md and the PNGs
    stats_cache  the data's statistics computed once and cached, keyed by the data
"""

from .run import Analysis, analyze, sigma_grid

__all__ = ["Analysis", "analyze", "sigma_grid"]
