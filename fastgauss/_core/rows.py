"""Passes over a large row set [N, d] in bounded memory (host-resident training sets included).

Blocks are sized from a byte budget, never a row count: a float64 row at d = 12 288 is 98 KB,
so a fixed 65 536-row block would be 6.4 GB. Every pass below holds at most about three
float64 temporaries of one block.
"""

from __future__ import annotations

import torch

from .arrays import check_finite

#: Bytes of one float64 block (the temporaries of every pass are a small multiple of it).
BLOCK_BYTES = 8 << 20


def block_rows(dim: int, budget: int = BLOCK_BYTES, element_size: int = 8) -> int:
    """Rows per block so that one block of ``element_size``-byte values fits in ``budget``."""
    return max(1, budget // max(1, element_size * dim))


def blocks(rows: torch.Tensor, budget: int = BLOCK_BYTES):
    """Consecutive blocks of ``rows`` ([N, d] views), each about ``budget`` bytes in float64."""
    step = block_rows(rows.shape[1] if rows.dim() > 1 else 1, budget)
    for start in range(0, rows.shape[0], step):
        yield rows[start:start + step]


def check_finite_rows(rows: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` when any row holds NaN or inf."""
    for block in blocks(rows):
        check_finite(block, name)


def mean(rows: torch.Tensor) -> torch.Tensor:
    """Mean row in float64: [d] (zeros for an empty set)."""
    total = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    for block in blocks(rows):
        total += block.sum(0, dtype=torch.float64)
    return total / max(1, rows.shape[0])


def centred_square_norms(rows: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """|y_i - c|^2 for every row, in float64: [N] (centred block by block, never the whole set)."""
    center = center.to(device=rows.device, dtype=torch.float64)
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
    start = 0
    for block in blocks(rows):
        centred = block.to(torch.float64) - center
        out[start:start + block.shape[0]] = centred.pow_(2).sum(1)
        start += block.shape[0]
    return out
