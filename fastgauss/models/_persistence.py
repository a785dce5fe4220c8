"""Reading NVlabs-style snapshot pickles (EDM, EDM2, StyleGAN) without their repository installed.

Those pickles store each network class together with the source code of its module: an object
is pickled as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where meta is a
dict with keys type ("class"), version, module_src (the module's source text), class_name and
state (the instance's __dict__). Unpickling executes module_src, so it runs code from the file:
``load_snapshot`` is only reached with ``trust_code=True``.

This is our own reader of that documented format (no code of theirs is used): a pickle.Unpickler
whose ``find_class`` answers the two names such pickles refer to (the reconstruct hook and
``dnnlib.EasyDict``) with local stand-ins, and which executes each embedded module in a fresh
namespace whose ``import`` of ``torch_utils`` / ``dnnlib`` is served by small stand-in modules.
Nothing is added to ``sys.modules`` and no import hook is installed.
"""

from __future__ import annotations

import builtins
import hashlib
import pickle
import types
import warnings

import torch

SUPPORTED_VERSIONS = (6,)  # the persistence format version written since 2021


class EasyDict(dict):
    """A dict with attribute access (what dnnlib.EasyDict objects unpickle to)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


def _persistent_class(cls):
    """Stand-in for ``persistence.persistent_class``: the class itself (we never re-pickle)."""
    return cls


def _const_like(ref, value, shape=None, dtype=None, device=None):
    value = torch.as_tensor(value, dtype=dtype or ref.dtype, device=device or ref.device)
    return value if shape is None else value.expand(shape)


def _constant(value, shape=None, dtype=None, device=None, memory_format=None):
    value = torch.as_tensor(value, dtype=dtype, device=device)
    return value if shape is None else value.expand(shape)


def _assert_shape(tensor, ref_shape):
    if tensor.ndim != len(ref_shape) or any(r is not None and int(s) != int(r) for s, r in
                                            zip(tensor.shape, ref_shape)):
        raise AssertionError(f"expected shape {ref_shape}, got {tuple(tensor.shape)}")


class _ShimModule(types.ModuleType):
    """A stand-in module; an attribute it lacks fails with a message saying what is missing."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{self.__name__}.{name} is not provided by fastgauss's stand-in for the NVlabs "
                             f"utilities; this pickle's code needs the NVlabs repository on sys.path")


def _shim_modules() -> dict:
    persistence = _ShimModule("torch_utils.persistence")
    persistence.persistent_class = _persistent_class
    persistence.import_hook = lambda hook: hook
    persistence.is_persistent = lambda obj: True
    misc = _ShimModule("torch_utils.misc")
    misc.const_like, misc.constant, misc.assert_shape = _const_like, _constant, _assert_shape
    misc.suppress_tracer_warnings = warnings.catch_warnings
    misc.profiled_function = lambda fn: fn
    torch_utils = _ShimModule("torch_utils")
    torch_utils.persistence, torch_utils.misc = persistence, misc
    util = _ShimModule("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib = _ShimModule("dnnlib")
    dnnlib.EasyDict, dnnlib.util = EasyDict, util
    return {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "torch_utils.misc": misc,
            "dnnlib": dnnlib, "dnnlib.util": util}


class SnapshotUnpickler(pickle.Unpickler):
    """Unpickles NVlabs persistent objects by executing their embedded module source."""

    def __init__(self, file):
        super().__init__(file)
        self._shims = _shim_modules()
        self._modules: dict[str, types.ModuleType] = {}  # sha256 of the source -> its module

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        root = name.split(".")[0]
        if level == 0 and root in ("torch_utils", "dnnlib"):
            if name not in self._shims:
                raise ImportError(f"{name} is not provided by fastgauss's stand-in for the NVlabs utilities")
            return self._shims[name] if fromlist else self._shims[root]
        return builtins.__import__(name, globals, locals, fromlist, level)

    def _module(self, source: str) -> types.ModuleType:
        key = hashlib.sha256(source.encode()).hexdigest()
        if key not in self._modules:
            module = types.ModuleType(f"_fastgauss_snapshot_{key[:16]}")
            module.__dict__["__builtins__"] = {**vars(builtins), "__import__": self._import}
            exec(compile(source, f"<pickled module {key[:16]}>", "exec"), module.__dict__)
            self._modules[key] = module
        return self._modules[key]

    def reconstruct(self, meta):
        meta = EasyDict(meta)
        if meta.get("version") not in SUPPORTED_VERSIONS or meta.get("type") != "class":
            raise ValueError(f"persistent object of format version {meta.get('version')!r}, type "
                             f"{meta.get('type')!r}; fastgauss reads version {SUPPORTED_VERSIONS[0]} classes")
        module = self._module(meta["module_src"])
        cls = module.__dict__.get(meta["class_name"])
        if not isinstance(cls, type):
            raise ValueError(f"the pickled source defines no class {meta['class_name']!r}")
        obj = cls.__new__(cls)
        state = EasyDict(meta.get("state") or {})
        setstate = getattr(obj, "__setstate__", None)
        if callable(setstate):
            setstate(state)
        else:
            obj.__dict__.update(state)
        return obj

    def find_class(self, module, name):
        if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
            return self.reconstruct
        if module in ("dnnlib", "dnnlib.util") and name == "EasyDict":
            return EasyDict
        if module.split(".")[0] in ("torch_utils", "dnnlib"):
            shim = self._shims.get(module)
            if shim is not None and name in shim.__dict__:
                return shim.__dict__[name]
            raise pickle.UnpicklingError(f"{module}.{name} is not provided by fastgauss's stand-in for the NVlabs "
                                         f"utilities")
        return super().find_class(module, name)


def load_snapshot(path):
    """The object stored in an NVlabs snapshot pickle (EDM: a dict with 'ema'). Runs its code."""
    with open(path, "rb") as f:
        return SnapshotUnpickler(f).load()
