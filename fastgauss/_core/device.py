"""Checking a ``device=`` argument before any work starts (a clear error instead of torch's deep one)."""

from __future__ import annotations

import torch


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a torch.device that exists on this machine, or ValueError naming ``name``.

    Accepts what torch.device accepts ("cpu", "cuda", "cuda:1", a torch.device). A CUDA device
    on a machine without CUDA, a CUDA index past the last GPU, or a name torch does not know
    (e.g. "gpu") is an error. Other device types torch knows (mps, xpu, meta) pass through.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'
    """
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {str(device)!r} asks for CUDA, but torch.cuda.is_available() is False on "
                             "this machine (use 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {str(device)!r} asks for GPU {dev.index}, but this machine has "
                             f"{torch.cuda.device_count()}")
    return dev
