"""Triton kernels of fastgauss and their launchers (installed as ``fastgauss.kernels``).

One module per kernel family: private ``@triton.jit`` kernels, then a launcher that takes
contiguous tensors, allocates what it needs, picks the grid and launches. Each module also
lists its launch configurations in ``gate_entries()`` for the compile gate (``check.py``).
"""

KERNEL_MODULES = ("moments", "gaussian", "empirical", "neighbors")
