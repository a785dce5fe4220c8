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


# The device policy (one rule for every op and module): nothing moves a caller's tensors or a module's
# state implicitly. Tensors that meet in one computation must already share a device; a mismatch is a
# ValueError naming the argument, both devices and the fix. ``.to()`` on a module moves its state.
# Noise levels given as Python floats, 0-d tensors or a sampling schedule are read as numbers and may
# live anywhere.


def require_device(tensor: torch.Tensor, name: str, device, owner: str) -> torch.Tensor:
    """``tensor`` unchanged when it lives on ``device``; else ValueError naming ``name``, both devices and the fix.

    owner: what holds ``device``, as the message should say it ("this GaussianDenoiser", "x").

    Example:
        >>> x = torch.zeros(2, 3)
        >>> require_device(x, "x", torch.device("cpu"), "this GaussianDenoiser") is x
        True
        >>> require_device(x, "x", torch.device("meta"), "this GaussianDenoiser")
        Traceback (most recent call last):
        ...
        ValueError: x: on cpu, but this GaussianDenoiser is on meta; move one with .to()
    """
    device = device if isinstance(device, torch.device) else torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" means the current GPU, as in torch
        device = torch.device("cuda", torch.cuda.current_device())
    if tensor.device != device:
        raise ValueError(f"{name}: on {tensor.device}, but {owner} is on {device}; move one with .to()")
    return tensor


def same_device(first: tuple[str, torch.Tensor], *others: tuple[str, torch.Tensor]) -> torch.device:
    """The device of ``first`` = (name, tensor) when every other (name, tensor) shares it; else ValueError.

    Example:
        >>> same_device(("x", torch.zeros(2)), ("mean", torch.zeros(2)))
        device(type='cpu')
        >>> same_device(("x", torch.zeros(2)), ("mean", torch.zeros(2, device="meta")))
        Traceback (most recent call last):
        ...
        ValueError: mean: on meta, but x is on cpu; move one with .to()
    """
    name, tensor = first
    for other_name, other in others:
        require_device(other, other_name, tensor.device, name)
    return tensor.device


def applied_device(fn, current: torch.device) -> torch.device:
    """The device ``fn`` (what ``nn.Module._apply`` passes: .to(), .cuda(), .cpu(), .double()) moves
    tensors to, or ``current`` when it only changes dtypes. For modules whose state is not a buffer.

    Example:
        >>> applied_device(lambda t: t.to("meta"), torch.device("cpu"))
        device(type='meta')
        >>> applied_device(lambda t: t.double(), torch.device("meta"))
        device(type='meta')
        >>> applied_device(lambda t: t.cpu(), torch.device("meta"))
        device(type='cpu')
    """
    single, half = torch.empty(0), torch.empty(0, dtype=torch.float16)
    moved = fn(single)
    if moved.device != single.device:
        return moved.device
    if moved is single and fn(half) is half:  # nothing changed on the CPU: a move to the CPU
        return single.device
    return current
