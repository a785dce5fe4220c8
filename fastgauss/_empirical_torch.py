"""Streaming (flash-attention style) empirical denoiser on PyTorch: chunks of the training set
flow past the queries; running max, sum of exponentials and weighted sums merge exactly.

With a shift c (the data mean), y' = y - c and x' = x - c, the logits are
    s_i = (x' . y'_i - |y'_i|^2 / 2) / sigma^2          (the |x'|^2 term cancels in the softmax)
and, with w = softmax(s):  D = c + sum_i w_i y'_i,
    J v   = (sum_i w_i y'_i (y'_i . v) - D' (D' . v)) / sigma^2      (D' = D - c)
    dD/ds = -(2 / sigma) (sum_i w_i s_i y'_i - D' sum_i w_i s_i).
Memory per chunk of c rows: O(B c) for the logits, never O(B N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Bytes of logits / weights per chunk: bounds the workspace (B x chunk) of every pass.
WORKSPACE_BYTES = 24 << 20


#: Bytes of one data chunk: small enough to stay in cache between its copy and its products.
CHUNK_CACHE_BYTES = 8 << 20


def chunk_rows(batch: int, dim: int, element_size: int, probes: int = 0, budget: int = WORKSPACE_BYTES) -> int:
    """Rows of data per chunk: the [B, c] temporaries fit in ``budget`` and the chunk in cache."""
    by_workspace = budget // (element_size * batch * (2 + probes))
    by_cache = CHUNK_CACHE_BYTES // (element_size * dim)
    return max(16, min(by_workspace, by_cache))


@dataclass
class Partial:
    """Softmax partial over some rows of the data, per query (all tensors share dtype/device).

    m: [B] running max of the logits; l: [B] sum of exp(s - m); acc: [B, d] sum of exp(s - m) y';
    optional acc_v: [K, B, d] sum of exp(s - m) y' (y' . v); acc_s: [B, d] and l_s: [B] for dD/dsigma.
    """

    m: torch.Tensor
    l: torch.Tensor
    acc: torch.Tensor
    acc_v: torch.Tensor | None = None
    acc_s: torch.Tensor | None = None
    l_s: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch, dim, *, probes=None, sigma_grad=False, dtype, device) -> Partial:
        z = dict(dtype=dtype, device=device)
        return cls(torch.full((batch,), float("-inf"), **z), torch.zeros(batch, **z), torch.zeros(batch, dim, **z),
                   None if probes is None else torch.zeros(probes, batch, dim, **z),
                   torch.zeros(batch, dim, **z) if sigma_grad else None,
                   torch.zeros(batch, **z) if sigma_grad else None)

    def rescaled(self, m_new: torch.Tensor) -> Partial:
        """The same partial expressed against a larger running max."""
        alpha = torch.exp(self.m - m_new)
        alpha = torch.where(torch.isfinite(self.m), alpha, torch.zeros_like(alpha))
        scale = lambda t, dims: None if t is None else t * alpha.reshape(alpha.shape + (1,) * dims)  # noqa: E731
        return Partial(m_new, self.l * alpha, scale(self.acc, 1), None if self.acc_v is None else self.acc_v * alpha[:, None],
                       scale(self.acc_s, 1), scale(self.l_s, 0))

    def merged(self, other: Partial) -> Partial:
        """Exact log-sum-exp merge of two partials over disjoint rows."""
        m = torch.maximum(self.m, other.m)
        a, b = self.rescaled(m), other.rescaled(m)
        add = lambda u, v: None if u is None else u + v  # noqa: E731
        return Partial(m, a.l + b.l, a.acc + b.acc, add(a.acc_v, b.acc_v), add(a.acc_s, b.acc_s), add(a.l_s, b.l_s))


def chunk_partial(state: Partial, xc: torch.Tensor, inv_var: torch.Tensor, yc: torch.Tensor,
                  probes: torch.Tensor | None = None, norms: torch.Tensor | None = None) -> Partial:
    """Fold one chunk of centred data yc: [c, d] into ``state`` (in place) and return it.

    xc: [B, d] centred queries; inv_var: [B] = 1 / sigma^2; probes: [K, B, d] or None;
    norms: [c] squared norms of the chunk's rows (computed here in float64 when None).
    """
    if norms is None:
        norms = (yc.to(torch.float64) ** 2).sum(1).to(yc.dtype)
    logits = torch.addmm(norms.mul(-0.5), xc, yc.T).mul_(inv_var[:, None])  # [B, c]
    m_new = torch.maximum(state.m, logits.max(1).values)
    alpha = torch.where(torch.isfinite(state.m), torch.exp(state.m - m_new), torch.zeros_like(m_new))
    state.m = m_new
    state.l.mul_(alpha)
    state.acc.mul_(alpha[:, None])
    if state.acc_s is not None:
        state.acc_s.mul_(alpha[:, None])
        state.l_s.mul_(alpha)
        scaled_logits = logits.clone()
    p = logits.sub_(m_new[:, None]).exp_()  # reuses the logits' memory
    state.l.add_(p.sum(1))
    state.acc.addmm_(p, yc)
    if probes is not None:
        state.acc_v.mul_(alpha[:, None])
        state.acc_v.add_((p * (probes @ yc.T)) @ yc)
    if state.acc_s is not None:
        ps = scaled_logits.mul_(p)
        state.acc_s.addmm_(ps, yc)
        state.l_s.add_(ps.sum(1))
    return state


def finish(part: Partial, sigma: torch.Tensor, probes: torch.Tensor | None = None):
    """(D' = D - c: [B, d], J v: [K, B, d] or None, dD/dsigma: [B, d] or None) from a full partial."""
    denoised = part.acc / part.l[:, None]
    jv = ds = None
    var = (sigma * sigma)[:, None]
    if probes is not None:
        dv = (denoised * probes).sum(-1, keepdim=True)  # [K, B, 1]
        jv = (part.acc_v / part.l[:, None] - denoised * dv) / var
    if part.acc_s is not None:
        mean_s = (part.l_s / part.l)[:, None]
        ds = -(2 / sigma[:, None]) * (part.acc_s / part.l[:, None] - denoised * mean_s)
    return denoised, jv, ds
