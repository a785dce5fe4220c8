"""Shared test helpers: dtype-aware tolerances, NaN poisoning, relative errors."""

import torch

#: Relative (Frobenius) error allowed against a float64 reference, by input dtype.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "result holds NaN or inf"
    scale = expected.norm().item()
    return (actual - expected).norm().item() / (scale if scale > 0 else 1.0)


def poisoned(*shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """An output buffer full of NaN, so any element a kernel fails to write shows up."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def random_chunks(generator: torch.Generator, n: int, max_chunk: int) -> list[int]:
    """Split n into random chunk sizes from 1 to max_chunk."""
    sizes, left = [], n
    while left:
        size = int(torch.randint(1, max_chunk + 1, (1,), generator=generator))
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes
