"""The training set of the empirical denoiser: rows left where they are (device, host or shards), their
centre and norms cached on the tensor's identity and version."""

from __future__ import annotations

import math

import torch

from ..._core import rows as _rows
from ..._core.arrays import as_float, as_tensor, check_finite
from ..._core.device import check_device


class TrainingSet:
    """A training set prepared for streaming: rows [N, d], their mean, and where they live.

    data: [N, *feature_shape], never copied as a whole: host memory is streamed chunk by
    chunk to the compute device, a layout that is not a flat view is flattened chunk by
    chunk. group: a torch.distributed group whose ranks each hold a shard; their partial
    results merge exactly. device: where the work runs (None: the data's device); queries must be
    there, and rows elsewhere stream there chunk by chunk because ``device`` asked for it.

    The centre, the row norms and the largest norm are cached against the data tensor's
    identity and version (``_version``, which every in-place change bumps), so after
    ``data.mul_(2)`` the next call recomputes them, and NaN written into the data is a
    ValueError at the next call. (A numpy array changed in place behind torch's back is not
    seen: pass a torch tensor, or build a new denoiser.)
    """

    def __init__(self, data, *, group=None, chunk_rows: int | None = None, device=None):
        data = as_float(as_tensor(data, "data"))
        if data.dim() < 2:
            raise ValueError(f"data: expected shape [N, *feature_shape], got {tuple(data.shape)}")
        if chunk_rows is not None and not (isinstance(chunk_rows, int) and chunk_rows >= 1):
            raise ValueError(f"chunk_rows: expected a positive integer or None, got {chunk_rows!r}")
        self.source = data
        self.feature_shape = tuple(data.shape[1:])
        self.dim = math.prod(self.feature_shape)
        self.group = group
        self.chunk_rows = chunk_rows
        self.device = data.device if device is None else check_device(device)  # where the work runs
        if data.shape[0] == 0 and group is None:
            raise ValueError("data: the training set is empty")
        self.last_precision: str | None = None
        self._key = None
        self.refresh()  # once, up front: every call needs the centre and the norms

    @property
    def n(self) -> int:
        """Rows on this rank."""
        return self.source.shape[0]

    @property
    def rows(self) -> torch.Tensor | None:
        """The data as a flat [N, d] view, or None where its layout has none (no copy is made)."""
        try:
            return self.source.view(self.n, self.dim)
        except RuntimeError:
            return None

    def blocks(self, rows: int):
        """(start, raw block [c, d]) over the rows: views where the layout allows."""
        for start in range(0, self.n, rows):
            block = self.source[start:start + rows]
            yield start, block.reshape(block.shape[0], self.dim)

    def _stale(self) -> bool:
        key = (id(self.source), self.source._version, self.source.data_ptr())
        stale = key != self._key
        if self.group is not None:
            import torch.distributed as dist

            flag = torch.tensor([float(stale)], dtype=torch.float64, device=self._comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            stale = bool(flag.item())
        self._new_key = key
        return stale

    def _comm_device(self) -> torch.device:
        if self.group is not None:
            import torch.distributed as dist

            if dist.get_backend(self.group) == "nccl":
                return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def refresh(self) -> None:
        """Recompute the centre, norms and largest norm if the data changed since the last call."""
        if not self._stale():
            return
        step = _rows.block_rows(self.dim)
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.source.device)
        for _, block in self.blocks(step):
            check_finite(block, "data")
            total += block.sum(0, dtype=torch.float64)
        count = torch.tensor([float(self.n)], dtype=torch.float64)
        if self.group is not None:
            import torch.distributed as dist

            comm = self._comm_device()
            total, count = total.to(comm), count.to(comm)
            dist.all_reduce(total, group=self.group)
            dist.all_reduce(count, group=self.group)
            if count.item() == 0:
                raise ValueError("data: the training set is empty on every rank")
            total = total.to(self.source.device)
        self.n_total = int(count.item())
        self.center = total / count.item()
        norms = torch.empty(self.n, dtype=torch.float64, device=self.source.device)
        for start, block in self.blocks(step):
            norms[start:start + block.shape[0]] = (block.to(torch.float64) - self.center).pow_(2).sum(1)
        largest = torch.tensor([float(norms.max()) if self.n else 0.0], dtype=torch.float64)
        if self.group is not None:
            import torch.distributed as dist

            largest = largest.to(self._comm_device())
            dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.group)
        self.max_norm = math.sqrt(float(largest.item()))
        self._norms64 = norms
        self._norms_on: dict = {}
        self._key = self._new_key

    def centred_norms(self, dtype, device=None) -> torch.Tensor:
        """|y_i - c|^2 for every row: [N] in ``dtype`` on ``device`` (computed in float64, cached)."""
        device = torch.device(device) if device is not None else self._norms64.device
        key = (dtype, device)
        if key not in self._norms_on:
            self._norms_on[key] = self._norms64.to(device=device, dtype=dtype)
        return self._norms_on[key]

    def chunks(self, device, dtype, rows: int):
        """(start, centred chunk [c, d], its squared norms [c]) on ``device`` in ``dtype``, chunk by chunk."""
        center = self.center.to(device=device, dtype=dtype)
        norms = self.centred_norms(dtype, device)
        for start, block in self.blocks(rows):
            yield (start, block.to(device=device, non_blocking=True).to(dtype) - center,
                   norms[start:start + block.shape[0]])

    def gather(self, index: torch.Tensor, device) -> torch.Tensor:
        """Raw rows ``index`` [P] as float64 [P, d] on ``device``."""
        picked = self.source[index.to(self.source.device)]
        return picked.reshape(picked.shape[0], self.dim).to(device=device, dtype=torch.float64)
