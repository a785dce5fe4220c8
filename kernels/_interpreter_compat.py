"""Triton interpreter compatibility: one guarded fix, applied only when TRITON_INTERPRET is set.

Triton's interpreter gives ``tl.tensor`` an ``__index__`` for every launch, so that loops with
a runtime bound (``for n0 in range(row_start, row_end, BLOCK_N)``) can run. Triton 3.6 writes
it as ``int(self.handle.data)``; a loaded scalar there is a one-element array, and numpy >= 2.4
refuses ``int()`` of an array with ``ndim > 0`` (``TypeError: only 0-dimensional arrays can be
converted to Python scalars``). Triton 3.9 squeezes first. :func:`apply` installs the 3.9
behaviour where, and only where, a probe of the interpreter's own ``__index__`` shows the
failure: compiled kernels, Triton 3.9 and numpy < 2.4 are left exactly as they are.

    >>> from fastgauss.kernels import _interpreter_compat
    >>> _interpreter_compat.apply() in (True, False)
    True
"""

from __future__ import annotations

import os
import types

import numpy as np

_MARK = "_fastgauss_index_fix"


def interpreting() -> bool:
    """Whether Triton's interpreter is on (TRITON_INTERPRET set to anything but "" or "0")."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _index(self) -> int:
    """``operator.index`` of an interpreted scalar: its handle holds a one-element array."""
    return int(np.asarray(self.handle.data).squeeze())


def _interpreter_index():
    """The ``__index__`` the installed interpreter gives ``tl.tensor``, or None if it gives none
    (or its layout is not the one this module knows: then nothing is patched)."""
    from triton.runtime import interpreter

    if not (hasattr(interpreter, "_patch_lang_tensor") and hasattr(interpreter, "_LangPatchScope")):
        return None
    probe = type("_Probe", (), {})
    scope = interpreter._LangPatchScope()
    try:
        interpreter._patch_lang_tensor(probe, scope)
        return probe.__dict__.get("__index__")
    finally:
        scope.restore()


def needs_index_fix() -> bool:
    """True when the interpreter's ``__index__`` fails on a one-element array (Triton 3.6 with
    numpy >= 2.4), False when it works or when there is nothing to probe."""
    index = _interpreter_index()
    if index is None:
        return False
    scalar = types.SimpleNamespace(handle=types.SimpleNamespace(data=np.array([3], dtype=np.int32)))
    try:
        return index(scalar) != 3
    except TypeError:
        return True


def apply() -> bool:
    """Install the fix if the interpreter is on and needs it; True when it is in place.

    Idempotent. The fix wraps the interpreter's per-launch patch of ``tl.tensor`` so that the
    squeezing ``__index__`` is set (and restored) together with the interpreter's own.
    """
    if not interpreting():
        return False
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True
    if not needs_index_fix():
        return False

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", _index)

    setattr(_patch_lang_tensor, _MARK, True)
    _patch_lang_tensor.__wrapped__ = original
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True
