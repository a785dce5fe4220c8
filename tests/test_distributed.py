"""Moments.all_reduce over 2 gloo processes on CPU equals one pass over all the data."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastgauss
from fastgauss import reference as ref
from helpers import rel_err

WORLD = 2


def _data():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(301, 19, generator=g) * 4 + 250
    z = torch.randn(301, 5, generator=g) + x[:, :5]
    return x, z


def _worker(rank: int, init_file: str, shards: list[tuple[int, int]], result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, z = _data()
        lo, hi = shards[rank]
        m = fastgauss.Moments()
        if hi > lo:  # a rank may hold no data at all
            for start in range(lo, hi, 40):
                m.update(x[start:min(hi, start + 40)], z[start:min(hi, start + 40)])
        m.all_reduce()
        torch.save(m.state_dict(), f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shards", [[(0, 140), (140, 301)], [(0, 301), (301, 301)]],
                         ids=["split", "one-rank-empty"])
def test_all_reduce_over_two_gloo_processes_equals_one_pass(tmp_path, shards):
    result = str(tmp_path / "state")
    mp.start_processes(_worker, args=(str(tmp_path / "init"), shards, result), nprocs=WORLD,
                       join=True, start_method="spawn")
    x, z = _data()
    for rank in range(WORLD):
        m = fastgauss.Moments().load_state_dict(torch.load(f"{result}.{rank}"))
        assert m.count == 301
        assert rel_err(m.mean, ref.mean(x)) < 1e-12
        assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6
        assert rel_err(m.cross_covariance(), ref.cross_covariance(z, x)) < 1e-6


def test_all_reduce_without_process_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="init_process_group"):
        fastgauss.Moments().all_reduce()
