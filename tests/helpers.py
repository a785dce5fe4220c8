"""Shared test helpers: dtype-aware tolerances, NaN poisoning, relative errors, a peak-RSS sampler."""

import os
import threading

import torch

#: Relative (Frobenius) error allowed against a float64 reference, by input dtype.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "result holds NaN or inf"
    scale = expected.norm().item()
    return (actual - expected).norm().item() / (scale if scale > 0 else 1.0)


def poisoned(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel fails to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def random_chunks(generator: torch.Generator, n: int, max_chunk: int) -> list[int]:
    """Split n into random chunk sizes from 1 to max_chunk."""
    sizes, left = [], n
    while left:
        size = int(torch.randint(1, max_chunk + 1, (1,), generator=generator))
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


class PeakRSS:
    """The peak resident set of this process while a ``with`` block runs, sampled by a thread.

    ``peak.extra`` (bytes) is the peak above the resident set at entry. Linux only (/proc/self/statm).
    Run it in a fresh process started with MALLOC_MMAP_THRESHOLD_=65536 and MALLOC_TRIM_THRESHOLD_=0:
    large blocks are then always mmap'ed and freed memory leaves the resident set, so the peak resident
    set is the peak of live allocations (tests/ops/test_empirical.py, benchmarks/bench_empirical.py).

    >>> with PeakRSS() as peak:
    ...     block = bytearray(1 << 20)
    >>> peak.extra >= 0
    True
    """

    def __init__(self):
        self.base = self.peak = 0
        self._running = False
        self._thread = None

    @staticmethod
    def rss() -> int:
        """The resident set now, bytes."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        return False

    @property
    def extra(self) -> int:
        """Bytes of the peak above the resident set at entry."""
        return self.peak - self.base


def random_gaussian(d: int = 6, rank: int | None = None, lam_rest=0.0, seed: int = 0):
    """(GaussianDenoiser in float64 of a random well-conditioned covariance [d, d], the generator
    that drew it, for further draws); ``rank`` / ``lam_rest`` as in ``from_covariance``."""
    import fastgauss

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.01 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    den = fastgauss.GaussianDenoiser.from_covariance(mean, cov, rank=rank, dtype=torch.float64, lam_rest=lam_rest)
    return den, g
