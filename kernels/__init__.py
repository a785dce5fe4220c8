"""Triton kernels of fastgauss and their launchers (installed as ``fastgauss.kernels``).

One module per kernel family: private ``@triton.jit`` kernels, then a launcher that takes
contiguous tensors, allocates what it needs, picks the grid and launches. Each module also
lists its launch configurations in ``gate_entries()`` for the compile gate (``check.py``).
Importing the package applies the interpreter fix of ``_interpreter_compat`` when
TRITON_INTERPRET is set (Triton 3.6 with numpy >= 2.4); compiled kernels are untouched.
"""

from . import _interpreter_compat

_interpreter_compat.apply()

KERNEL_MODULES = ("moments", "gaussian", "empirical", "neighbors")
