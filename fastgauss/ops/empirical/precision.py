"""Which product precision the distances may use, and the window of rows re-scored exactly in float64."""

from __future__ import annotations

import math

import torch

from .training_set import TrainingSet
from ..._core.precision import UNIT_ROUNDOFF


#: Unit roundoff of each product mode's operands (relative error of one operand).
_UNIT_ROUNDOFF = {mode: UNIT_ROUNDOFF[mode] for mode in ("bf16", "tf32", "ieee", "float64")}
#: Fastest first.
_SPEED_ORDER = ("bf16", "tf32", "ieee")
#: Probabilistic factor of the accumulation error (see ``error_bound``).
LAMBDA = 8.0
#: Default weight tolerance of the exact path: every row left out of the float64 re-scoring
#: carries, together with all such rows, less than this fraction of the total weight.
WEIGHT_TOL = 1e-7
#: fp32 weights are used as they are (no re-scoring) where their bound keeps every weight
#: within this relative error.
ENOUGH = 1e-6
#: Rows re-scored per query at most; a query whose window holds more is recomputed in float64.
WINDOW_CAP = 256
#: Candidate records (24 bytes each) kept at most during a pass, all queries together: 8 MB,
#: two thirds of the PyTorch path's chunk workspace (``_torch.WORKSPACE_BYTES``).
MAX_RECORDS = (8 << 20) // 24
#: Suffix of ``last_precision`` when the exact path ran.
EXACT = " + float64 near ties"


def error_bound(mode: str, x_norm_max, y_norm_max, dim: int):
    """Bound on the error of a squared distance |x - y|^2 = |x'|^2 - 2 x'.y' + |y'|^2 as computed.

    The product x'.y' carries operand rounding (u_mode for each of the two operands, worst
    case) plus the accumulation of d rounded terms. For the accumulation this uses the
    probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 2019): with rounding errors
    independent and of mean zero, |error| <= lambda sqrt(d) u sum |x_k y_k| with probability
    at least 1 - 2 exp(-lambda^2 / 2); lambda = 8 gives 3e-14 per product, so even 10^10 products
    (B x N at dataset scale) leave it unbroken with probability 0.9997. This is how the products are actually
    summed (fp32 FMA chains in BLAS blocks and in the kernel's BLOCK_K steps; centred data
    has no common offset to make errors correlate), and it is sqrt(d) / lambda (7x at d = 3072)
    tighter than the worst case d u, which holds for any order but is never approached. The
    rest (the rounded norm, the sum, the scaling by 1/sigma^2 and the shift by the maximum)
    is at most four roundings of a value below 2 |x'||y'| + |y'|^2. Works on floats or tensors.
    """
    u_acc = _UNIT_ROUNDOFF["float64" if mode == "float64" else "ieee"]
    xy = x_norm_max * y_norm_max
    return 2 * (2 * _UNIT_ROUNDOFF[mode] + LAMBDA * math.sqrt(dim) * u_acc) * xy + 4 * u_acc * (2 * xy + y_norm_max**2)


def choose_precision(sigma_min: float, x_norm_max: float, y_norm_max: float, dim: int,
                     tolerance: float = 1e-4) -> str:
    """The fastest mode whose bound keeps every weight within ``tolerance`` (relative).

    An error e in a squared distance moves a weight by a factor of at most exp(e / (2 sigma^2))
    in its numerator and as much in the normalizer: within exp(e / sigma^2) in all. When no
    mode meets the tolerance this is "ieee", and the exact path (float64 re-scoring of the
    near ties) makes the result exact.
    """
    for mode in _SPEED_ORDER:
        exponent = error_bound(mode, x_norm_max, y_norm_max, dim) / sigma_min**2
        if exponent < 1 and math.expm1(exponent) <= tolerance:
            return mode
    return "ieee"


def windows(mode: str, x_norm: torch.Tensor, sigma: torch.Tensor, data: TrainingSet, *, derivatives: bool,
            tol: float = WEIGHT_TOL) -> torch.Tensor:
    """Per query [B] float64: the width (in logits) of the window re-scored in float64, or -1 for none.

    E = error_bound / (2 sigma^2) bounds the error of one computed logit. A row whose computed
    logit lies more than 2E + ln(N / tol) below the computed maximum has a true weight below
    tol / N of the largest, so all such rows together carry less than tol: they contribute as
    computed. Every row inside the window is re-scored in float64 from direct differences.
    For the derivatives the rows left out also enter J v = Cov_w(y) v / sigma^2 and
    dD/dsigma = Cov_w(y, q) / sigma^3 magnified by up to ((2R + |x'|) / sigma)^3, which the
    window adds (R: the largest centred row norm). No window where the bound already keeps
    every fp32 weight within ENOUGH (then no re-scoring is needed).
    """
    err = error_bound(mode, x_norm, data.max_norm, data.dim) / (2 * sigma**2)
    reach = 2 * data.max_norm + x_norm
    extra = (3 * torch.log(reach / sigma)) if derivatives else torch.log(reach)
    width = 2 * err + math.log(max(1, data.n_total) / tol) + extra.clamp_min(0)
    return torch.where(torch.expm1(2 * err) > ENOUGH, width, torch.full_like(width, -1.0))


class _Candidates:
    """Rows excluded from the streamed accumulation because they lie in a query's window."""

    def __init__(self, batch: int, width: torch.Tensor):
        self.batch, self.width = batch, width.clone()
        dev = width.device
        self.qid = torch.empty(0, dtype=torch.long, device=dev)
        self.idx = torch.empty(0, dtype=torch.long, device=dev)
        self.s = torch.empty(0, dtype=torch.float64, device=dev)
        self.run_max = torch.full((batch,), float("-inf"), dtype=torch.float64, device=dev)
        self.overflow = torch.zeros(batch, dtype=torch.bool, device=dev)

    def threshold(self) -> torch.Tensor:
        return torch.where(self.width >= 0, self.run_max - self.width, torch.full_like(self.run_max, float("inf")))

    def add(self, qid, idx, s) -> None:
        self.qid, self.idx, self.s = torch.cat([self.qid, qid]), torch.cat([self.idx, idx]), torch.cat([self.s, s])

    def admit(self, inside: torch.Tensor) -> torch.Tensor:
        """``inside`` [B, c] (a chunk's rows in each query's window) with the rows of queries that
        would hold more than their share of MAX_RECORDS cleared: those queries overflow now (they
        are recomputed in float64 whatever their records, so nothing about the result changes),
        and the records never outgrow MAX_RECORDS, however wide the windows (sigma ~ the data's
        spread puts most rows of a chunk in them)."""
        new = inside.sum(1)
        if self.qid.numel() + int(new.sum()) <= MAX_RECORDS // 2:
            return inside
        self.prune()
        held = torch.bincount(self.qid, minlength=self.batch)
        over = held + new > max(WINDOW_CAP, MAX_RECORDS // (2 * self.batch))
        if not over.any():
            return inside
        self.overflow |= over
        self.width = torch.where(over, torch.full_like(self.width, -1.0), self.width)
        keep = ~over.index_select(0, self.qid)
        self.qid, self.idx, self.s = self.qid[keep], self.idx[keep], self.s[keep]
        return inside & ~over[:, None]

    def prune(self, final: bool = False) -> None:
        """Drops rows that fell out of their window (their weight is negligible against the
        maximum so far, hence against the final one). Records are 24 bytes each, so during the
        pass many may wait for a larger maximum (before the best row of a query comes by, its
        window follows a lower one); at the end, a query whose window still holds more than
        WINDOW_CAP rows overflows (and is recomputed in float64)."""
        keep = self.s >= self.threshold().index_select(0, self.qid)
        counts = torch.bincount(self.qid[keep], minlength=self.batch)
        if final:
            over = counts > WINDOW_CAP
        elif int(counts.sum()) > MAX_RECORDS:
            over = counts > max(WINDOW_CAP, MAX_RECORDS // (2 * self.batch))
        else:
            over = None
        if over is not None and over.any():
            self.overflow |= over
            self.width = torch.where(over, torch.full_like(self.width, -1.0), self.width)
            keep &= ~over.index_select(0, self.qid)
        self.qid, self.idx, self.s = self.qid[keep], self.idx[keep], self.s[keep]


def _resolve(precision: str, xc64: torch.Tensor, sigma: torch.Tensor, data: TrainingSet) -> tuple[str, str]:
    """(distance products, weighted-sum products) for the kernel.

    An explicit mode applies to both. "auto" lowers the distances to the mode
    ``choose_precision`` picks for this call and keeps the weighted sum at about fp32
    accuracy (tf32x3 on tensor cores; exact fp32 products when the distances are too).
    """
    if precision == "auto":
        qk = choose_precision(float(sigma.min()), float(xc64.norm(dim=1).max()), data.max_norm, data.dim)
        return qk, ("ieee" if qk == "ieee" else "tf32x3")
    return precision, precision
