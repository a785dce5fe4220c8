"""PyTorch path of the centred Gram accumulation: blocked BLAS products, bounded memory.

Same contract as ``fastgauss.kernels.moments.centered_gram_accumulate``: out (float64)
+= (a - a_shift)^T (b - b_shift), only the upper triangle meaningful in the symmetric case,
where only column blocks on and above the diagonal are multiplied (about half the work).
"""

from __future__ import annotations


#: Column block of the symmetric product: large enough for BLAS to run near its peak.
COLUMN_BLOCK = 512
#: Rows centred at a time: bounds the temporary copy and the fp32 accumulation length.
MAX_ROWS = 4096
MEMORY_BUDGET_BYTES = 64 << 20


def _column_blocks(dim: int) -> list[slice]:
    return [slice(s, min(s + COLUMN_BLOCK, dim)) for s in range(0, dim, COLUMN_BLOCK)]


def centered_gram_accumulate(out, a, a_shift, b=None, b_shift=None):
    """out: [da, db] float64; a: [n, da], a_shift: [da] (float32 or float64, one dtype);
    b, b_shift likewise or None for the symmetric product of a."""
    n = a.shape[0]
    width = a.shape[1] + (0 if b is None else b.shape[1])
    rows = max(1, min(MAX_ROWS, MEMORY_BUDGET_BYTES // (a.element_size() * width)))
    blocks = _column_blocks(a.shape[1])
    for start in range(0, n, rows):
        ca = a[start:start + rows] - a_shift
        if b is None:
            for i, bi in enumerate(blocks):
                for bj in blocks[i:]:
                    out[bi, bj] += ca[:, bi].T @ ca[:, bj]
        else:
            cb = b[start:start + rows] - b_shift
            out += ca.T @ cb
    return out
