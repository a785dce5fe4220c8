"""Triton interpreter compatibility: two guarded fixes, applied only when TRITON_INTERPRET is set.

Triton's interpreter gives ``tl.tensor`` an ``__index__`` for every launch, so that loops with
a runtime bound (``for n0 in range(row_start, row_end, BLOCK_N)``) can run. Triton 3.6 writes
it as ``int(self.handle.data)``; a loaded scalar there is a one-element array, and numpy >= 2.4
refuses ``int()`` of an array with ``ndim > 0`` (``TypeError: only 0-dimensional arrays can be
converted to Python scalars``). Triton 3.9 squeezes first. :func:`apply` installs the 3.9
behaviour where, and only where, a probe of the interpreter's own ``__index__`` shows the
failure: compiled kernels, Triton 3.9 and numpy < 2.4 are left exactly as they are.

The second is about time, not results: the interpreter reduces with numpy for sum, min, max,
argmin and argmax, and with a Python loop over every element for any other combine function.
``tl.sort`` (the nearest-neighbour kernel's running top-k) calls ``xor_sum`` in each of its
compare-and-swap stages, so one interpreted sort of a 64 x 128 block took seconds. :func:`apply`
adds ``numpy.bitwise_xor.reduce`` for ``tl.standard._xor_combine`` (xor is associative and
commutative, so the result is the same integer, bit for bit, as the loop's); every other combine
function still takes the interpreter's own path.

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


_XOR_MARK = "_fastgauss_xor_reduce"


def _xor_reduce(ops, input):
    """The interpreter's ``generic_reduce`` of one integer block with ``a ^ b``, in numpy: the same
    values, dtype and shape (axis None: a scalar, or all-ones dims with keep_dims)."""
    data = input[0].handle.data
    if ops.axis is None:
        value = np.bitwise_xor.reduce(data.reshape(-1))
        value = value.reshape((1,) * data.ndim) if ops.keep_dims else value.item()
    else:
        value = np.bitwise_xor.reduce(data, axis=ops.axis, keepdims=ops.keep_dims)
    return [ops.to_tensor(value, input[0].dtype)]


def apply_xor_reduce() -> bool:
    """Give the interpreter's reductions a numpy path for ``xor_sum`` (see the module docstring);
    True when it is in place. Idempotent; nothing is patched without the interpreter, or where the
    interpreter's layout (``ReduceOps.apply_impl``, ``tl.standard._xor_combine``) is not this one."""
    if not interpreting():
        return False
    import triton.language as tl
    from triton.runtime import interpreter

    ops = getattr(interpreter, "ReduceOps", None)
    combine = getattr(tl.standard, "_xor_combine", None)
    original = getattr(ops, "apply_impl", None)
    if original is None or combine is None or not hasattr(ops, "to_tensor"):
        return False
    if getattr(original, _XOR_MARK, False):
        return True

    def apply_impl(self, input):
        if self.combine_fn is combine and len(input) == 1 and input[0].handle.data.dtype.kind in "iu":
            return _xor_reduce(self, input)
        return original(self, input)

    setattr(apply_impl, _XOR_MARK, True)
    apply_impl.__wrapped__ = original
    ops.apply_impl = apply_impl
    return True


def apply() -> bool:
    """Install the ``__index__`` fix if the interpreter is on and needs it, and the ``xor_sum``
    path (:func:`apply_xor_reduce`) whenever the interpreter is on; True when the ``__index__``
    fix is in place.

    Idempotent. The fix wraps the interpreter's per-launch patch of ``tl.tensor`` so that the
    squeezing ``__index__`` is set (and restored) together with the interpreter's own.
    """
    if not interpreting():
        return False
    apply_xor_reduce()
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
