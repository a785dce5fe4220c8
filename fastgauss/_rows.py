"""Passes over a large row set [N, d] in bounded memory (host-resident training sets included)."""

from __future__ import annotations

import torch

from ._arrays import check_finite

#: Rows per block: a float64 copy of one block stays in the tens of megabytes at d = 12 288.
ROWS_PER_BLOCK = 1 << 16


def blocks(rows: torch.Tensor):
    for start in range(0, rows.shape[0], ROWS_PER_BLOCK):
        yield rows[start:start + ROWS_PER_BLOCK]


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
    """|y_i - c|^2 for every row, in float64: [N]."""
    center = center.to(device=rows.device, dtype=torch.float64)
    parts = [((block.to(torch.float64) - center) ** 2).sum(1) for block in blocks(rows)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=rows.device)
