"""Persistence of ``Moments``: the versioned state dict, checked when it is read back."""

from __future__ import annotations

import math

import torch

from .products import PRODUCT_ROUNDING, _CONSERVATIVE, _upper_to_symmetric

_STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1 did not record the product precision


def state_of(moments) -> dict:
    """A copy of ``moments``' state (``Moments.state_dict``), for torch.save."""
    state = {"version": _STATE_VERSION, "count": moments.count, "precision": moments.precision,
             "product_precision": moments.product_precision,
             "feature_shape": moments.feature_shape, "cross_feature_shape": moments.cross_feature_shape}
    if moments.feature_shape is not None:
        state["mean"] = moments._mean.clone()
        state["scatter"] = _upper_to_symmetric(moments._scatter)
        if moments.paired:
            state["cross_mean"] = moments._cross_mean.clone()
            state["cross_scatter"] = moments._cross_scatter.clone()
    return state


def restored(state: dict):
    """A new Moments holding a state written by ``state_of`` (``Moments.load_state_dict``)."""
    if state.get("version") not in _READABLE_VERSIONS:
        raise ValueError(f"state: version {state.get('version')!r} is not one of {_READABLE_VERSIONS}")
    from .op import Moments

    fresh = Moments(precision=state["precision"])
    fresh.count = int(state["count"])
    products = state.get("product_precision", _CONSERVATIVE[fresh.precision] if fresh.count else None)
    if products is not None and products not in PRODUCT_ROUNDING:
        raise ValueError(f"state['product_precision']: expected one of {', '.join(PRODUCT_ROUNDING)}, "
                         f"got {products!r}")
    fresh.product_precision = products
    if state["feature_shape"] is not None:
        shape, cross_shape = tuple(state["feature_shape"]), state["cross_feature_shape"]
        cross_shape = None if cross_shape is None else tuple(cross_shape)
        d = math.prod(shape)
        expect = {"mean": (d,), "scatter": (d, d)}
        if cross_shape is not None:
            expect.update(cross_mean=(math.prod(cross_shape),), cross_scatter=(math.prod(cross_shape), d))
        for key, want in expect.items():
            got = tuple(state[key].shape) if key in state else None
            if got != want:
                raise ValueError(f"state[{key!r}]: expected shape {want}, got {got}")
        fresh.feature_shape, fresh.cross_feature_shape = shape, cross_shape
        fresh._mean = state["mean"].to(torch.float64).clone()
        fresh._scatter = state["scatter"].to(torch.float64).clone()
        if cross_shape is not None:
            fresh._cross_mean = state["cross_mean"].to(torch.float64).clone()
            fresh._cross_scatter = state["cross_scatter"].to(torch.float64).clone()
    return fresh
