"""Streaming (flash-attention style) empirical denoiser on PyTorch: chunks of the training set
flow past the queries; per query a weighted-mean / weighted-covariance partial merges exactly.

With a shift c (the data mean), y' = y - c and x' = x - c, the logits are
    s_i = z_i / sigma^2,   z_i = x' . y'_i - |y'_i|^2 / 2     (= (|x'|^2 - |x - y_i|^2) / 2)
and, with w = softmax(s):  D = c + mu,  mu = sum_i w_i y'_i,
    J v   = sum_i w_i (y'_i - mu)((y'_i - mu) . v) / sigma^2          (J = dD/dx, symmetric)
    dD/ds = -2 sum_i w_i (y'_i - mu)(z_i - zbar) / sigma^3              (zbar = sum_i w_i z_i).
Both are weighted covariances, accumulated around the running weighted mean (never as the
difference of two large second moments, which cancels catastrophically at small sigma).

Partial state per query (``Partial``): m (reference logit), l = sum e^{s_i - m}, mu, and
C_v = sum e^{s_i - m} (y'_i - mu)((y'_i - mu) . v) per probe v, zbar, C_z = sum e^{s_i - m}
(y'_i - mu)(z_i - zbar). Two partials over disjoint rows merge exactly (Chan et al.):
    alpha_a = e^{m_a - m}, L_a = l_a alpha_a, l = L_a + L_b, delta = mu_b - mu_a,
    mu = mu_a + delta L_b / l,  C = C_a alpha_a + C_b alpha_b + (L_a L_b / l) delta (delta . v).
Memory per chunk of c rows: O(B c (K + 2)) for the logits, never O(B N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..._core.dtypes import compute_dtype

#: Bytes of logits / weights per chunk: bounds the workspace (B x chunk) of every pass.
WORKSPACE_BYTES = 12 << 20
#: Bytes of one data chunk: large enough that the per-chunk work on [B, c] and [B, d] is small
#: beside the chunk's products, small enough to stay in cache between its copy and its products.
CHUNK_CACHE_BYTES = 16 << 20
#: Bytes of the float64 [P, d] temporaries of one block of exactly re-scored rows.
EXACT_BYTES = 8 << 20


def chunk_rows(batch: int, dim: int, element_size: int, probes: int = 0, budget: int = WORKSPACE_BYTES) -> int:
    """Rows of data per chunk: the [B, c] temporaries fit in ``budget`` and the chunk in cache."""
    by_workspace = budget // (element_size * max(1, batch) * (3 + 2 * probes))
    by_cache = CHUNK_CACHE_BYTES // (element_size * dim)
    return max(16, min(by_workspace, by_cache))


def rescale(m_old: torch.Tensor, m_new: torch.Tensor) -> torch.Tensor:
    """The one log-sum-exp merge step: e^{m_old - m_new}, the factor that moves a sum of
    e^{s - m_old} onto the reference m_new >= m_old; 0 where m_old = -inf (an empty partial)."""
    return torch.where(torch.isfinite(m_old), torch.exp(m_old - m_new), torch.zeros_like(m_old))


def reference(m: torch.Tensor) -> torch.Tensor:
    """The reference logit to subtract before exp: m, or 0 where m = -inf (every row left out),
    so that e^{s - reference} is 0 there rather than NaN."""
    return torch.where(torch.isfinite(m), m, 0)


def _takes_in_place(state: torch.Tensor, *updates: torch.Tensor) -> bool:
    """Whether ``state`` can be updated in place from ``updates``: not when torch.func.vmap batches
    an update but not the state (batched probes, e.g. in jacobian_spectrum). Adds zeros only."""
    try:
        for u in updates:
            state.add_(u.sum() * 0)
    except RuntimeError:  # adding a zero fails only when the zero carries batch dimensions the state lacks
        return False
    return True


@dataclass
class Partial:
    """Weighted-covariance softmax partial over some rows of the data, per query.

    m: [B] reference logit (-inf when no row); l: [B] sum of e^{s - m}; mu: [B, d] weighted
    mean of the centred rows; cv: [K, B, d] or None (J v scatter); zbar: [B] and cz: [B, d] or
    None (dD/dsigma scatter). All on one device; a chunk's partial may hold its [B, d] parts in
    the products' dtype (the running state is float64).
    """

    m: torch.Tensor
    l: torch.Tensor
    mu: torch.Tensor
    cv: torch.Tensor | None = None
    zbar: torch.Tensor | None = None
    cz: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch, dim, *, probes=None, sigma_grad=False, dtype, device) -> Partial:
        z = dict(dtype=dtype, device=device)
        return cls(torch.full((batch,), float("-inf"), **z), torch.zeros(batch, **z), torch.zeros(batch, dim, **z),
                   None if probes is None else torch.zeros(probes, batch, dim, **z),
                   torch.zeros(batch, **z) if sigma_grad else None,
                   torch.zeros(batch, dim, **z) if sigma_grad else None)

    def merged(self, other: Partial, probes: torch.Tensor | None = None) -> Partial:
        """Exact merge of two partials over disjoint rows (``probes`` [K, B, d] when cv is kept)."""
        copy = Partial(*(None if t is None else t.to(compute_dtype(t.dtype, o.dtype), copy=True)
                         for t, o in zip(self._fields(), other._fields())))
        return copy.merge_(other, probes)

    def merge_(self, other: Partial, probes: torch.Tensor | None = None) -> Partial:
        """In place: fold ``other`` (disjoint rows, left unchanged) into this partial; returns self.

        The update needs no temporary of the size of cv ([K, B, d]): the memory of a pass is
        its state and one chunk."""
        m = torch.maximum(self.m, other.m)
        a, b = rescale(self.m, m), rescale(other.m, m)
        la, lb = self.l * a, other.l * b
        l = la + lb
        positive = l > 0
        frac = torch.where(positive, lb / torch.where(positive, l, 1), 0)
        cross = la * frac  # L_a L_b / l
        delta = other.mu.to(self.mu.dtype) - self.mu
        if self.cv is not None:
            dv = torch.einsum("kbd,bd->kb", probes.to(delta.dtype), delta)[..., None]  # delta . v: [K, B, 1]
            if not _takes_in_place(self.cv, other.cv, dv):
                # Under vmap (batched probes, e.g. jacobian_spectrum) an unbatched state cannot take a
                # batched update in place: this one step is out of place, the state batched after it.
                self.cv = self.cv * a[:, None] + other.cv * b[:, None] + delta * (dv * cross[:, None])
            else:
                self.cv.mul_(a[:, None]).addcmul_(other.cv, b[:, None]).addcmul_(delta, dv * cross[:, None])
        if self.cz is not None:
            dz = other.zbar.to(self.zbar.dtype) - self.zbar
            self.cz.mul_(a[:, None]).addcmul_(other.cz, b[:, None]).addcmul_(delta, (cross * dz)[:, None])
            self.zbar = self.zbar + dz * frac
        self.mu.addcmul_(delta, frac[:, None])
        self.m, self.l = m, l
        return self

    def _fields(self):
        return (self.m, self.l, self.mu, self.cv, self.zbar, self.cz)

    def select(self, index: torch.Tensor) -> Partial:
        """The partial of queries ``index`` only."""
        pick = lambda t, dim=0: None if t is None else t.index_select(dim, index)  # noqa: E731
        return Partial(pick(self.m), pick(self.l), pick(self.mu), pick(self.cv, 1), pick(self.zbar), pick(self.cz))

    def replace(self, index: torch.Tensor, other: Partial) -> Partial:
        """In place: queries ``index`` taken from ``other`` (a partial of len(index) queries); returns self."""
        for dim, mine, theirs in ((0, self.m, other.m), (0, self.l, other.l), (0, self.mu, other.mu),
                                  (1, self.cv, other.cv), (0, self.zbar, other.zbar), (0, self.cz, other.cz)):
            if mine is not None:
                mine.index_copy_(dim, index, theirs.to(mine))
        return self

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.m, self.l, self.mu, self.cv, self.zbar, self.cz) if t is not None]

    def like(self, tensors: list[torch.Tensor]) -> Partial:
        """A partial of the same fields from ``tensors`` (the order of ``tensors()``)."""
        it = iter(tensors)
        take = lambda t: None if t is None else next(it)  # noqa: E731
        return Partial(*(take(t) for t in (self.m, self.l, self.mu, self.cv, self.zbar, self.cz)))


def chunk_logits(xc: torch.Tensor, inv_var: torch.Tensor, yc: torch.Tensor, norms: torch.Tensor,
                 keep_z: bool = True):
    """(z, s): [B, c] unscaled logits x'.y' - |y'|^2 / 2 and logits z / sigma^2, in yc's dtype
    (z is None and s takes its memory when not ``keep_z``)."""
    z = torch.addmm(norms.mul(-0.5), xc, yc.T)
    if not keep_z:
        return None, z.mul_(inv_var[:, None])
    return z, z * inv_var[:, None]


def chunk_partial(s: torch.Tensor, z: torch.Tensor, yc: torch.Tensor, probes: torch.Tensor | None = None,
                  sigma_grad: bool = False, state_dtype=torch.float64, top=None, leave_out=None) -> Partial:
    """The partial of one chunk of centred rows yc: [c, d] from its logits s, z: [B, c].

    top: s.max(1) when already known; leave_out: [B, c] bool, rows left out.
    s is overwritten. Products run in yc's dtype around a per-query reference row
    r (the chunk's best row), so no two large terms are subtracted; probes: [K, B, d].
    """
    if leave_out is not None:
        top = s.masked_fill_(leave_out, float("-inf")).max(1)  # the reference: the best row kept
    m, best = s.max(1) if top is None else top
    p = s.sub_(reference(m)[:, None]).exp_()  # takes the logits' memory
    l = p.sum(1)
    linv = torch.where(l > 0, 1 / torch.where(l > 0, l, 1), 0)
    mu = (p @ yc) * linv[:, None]
    out = lambda t: None if t is None else t.to(state_dtype)  # noqa: E731
    cv = zbar = cz = None
    if probes is not None or sigma_grad:
        r = yc.index_select(0, best)  # [B, d]
        dm = mu - r
    if probes is not None:
        pr = probes.to(yc.dtype)
        t = torch.matmul(pr, yc.T).sub_(torch.einsum("kbd,bd->kb", pr, r)[..., None])  # (y' - r) . v: [K, B, c]
        pt = t.mul_(p)
        # sum p (y' - r)((y' - r).v) - l (mu - r)((mu - r).v)
        cv = torch.matmul(pt, yc).addcmul_(r, pt.sum(-1, keepdim=True), value=-1)
        cv.addcmul_(dm, (torch.einsum("kbd,bd->kb", pr, dm) * l)[..., None], value=-1)
    if sigma_grad:
        zbar = (p * z).sum(1) * linv
        pdz = p * (z - zbar[:, None])
        cz = (pdz @ yc).addcmul_(mu, pdz.sum(1, keepdim=True), value=-1)
    # m, l, zbar in the state's dtype; the [B, d] and [K, B, d] parts stay in the products' dtype
    # (merge_ folds them into a float64 state without a converted copy)
    return Partial(out(m), out(l), mu, cv, out(zbar), cz)


def exact_partial(batch: int, qid: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, center: torch.Tensor,
                  var: torch.Tensor, probes: torch.Tensor | None = None, sigma_grad: bool = False) -> Partial:
    """Float64 partial of selected (query, row) pairs, from direct differences.

    qid: [P] query of each pair; rows: [P, d] raw data rows; x: [B, d] raw queries; center: [d];
    var: [B] sigma^2; probes: [K, B, d]. All float64. Logits s = (|x'|^2 - |x - y|^2) / (2 sigma^2),
    the frame of ``chunk_logits``.
    """
    q = (rows - x.index_select(0, qid)).pow_(2).sum(1)
    xn = (x - center).pow(2).sum(1)
    z = (xn.index_select(0, qid) - q) * 0.5
    s = z / var.index_select(0, qid)
    m = torch.full((batch,), float("-inf"), dtype=s.dtype, device=s.device).scatter_reduce(0, qid, s, "amax")
    p = torch.exp(s - m.index_select(0, qid))
    # out of place throughout: under vmap (J v over batched probes) the zeros are unbatched, the updates not
    l = torch.zeros(batch, dtype=s.dtype, device=s.device).index_add(0, qid, p)
    linv = torch.where(l > 0, 1 / torch.where(l > 0, l, 1), 0)
    yc = rows - center
    mu = torch.zeros(batch, rows.shape[1], dtype=s.dtype, device=s.device).index_add(0, qid, yc * p[:, None])
    mu = mu * linv[:, None]
    dy = yc - mu.index_select(0, qid)  # exact differences y' - mu
    cv = zbar = cz = None
    if probes is not None:
        t = (dy * probes.index_select(1, qid)).sum(-1) * p  # [K, P]
        cv = torch.zeros(probes.shape[0], batch, rows.shape[1], dtype=s.dtype, device=s.device)
        cv = cv.index_add(1, qid, dy * t[..., None])
    if sigma_grad:
        zbar = torch.zeros_like(l).index_add(0, qid, p * z) * linv
        cz = torch.zeros_like(mu).index_add(0, qid, dy * (p * (z - zbar.index_select(0, qid)))[:, None])
    return Partial(m, l, mu, cv, zbar, cz)


def finish(part: Partial, sigma: torch.Tensor, probes: torch.Tensor | None = None):
    """(D' = D - c: [B, d], J v: [K, B, d] or None, dD/dsigma: [B, d] or None) from a full partial."""
    jv = ds = None
    inv_l = 1 / part.l
    if part.cv is not None:
        jv = part.cv * (inv_l / sigma**2)[:, None]
    if part.cz is not None:
        ds = part.cz * (-2 * inv_l / sigma**3)[:, None]
    return part.mu, jv, ds
