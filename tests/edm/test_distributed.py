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
        assert m.product_precision == "float32"  # the empty rank too: the worst any rank used
        assert rel_err(m.mean, ref.mean(x)) < 1e-12
        assert rel_err(m.covariance(), ref.covariance(x)) < 1e-6
        assert rel_err(m.cross_covariance(), ref.cross_covariance(z, x)) < 1e-6


def test_all_reduce_without_process_group_is_a_clear_error():
    with pytest.raises(RuntimeError, match="init_process_group"):
        fastgauss.Moments().all_reduce()


def _empirical_worker(rank: int, init_file: str, result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data, queries, sigma = _empirical_data()
        shard = data[:90] if rank == 0 else data[90:]  # uneven shards
        den = fastgauss.EmpiricalDenoiser(shard, group=dist.group.WORLD)
        out = den(queries, sigma)
        _, jv = den.jvp(queries, sigma, torch.ones_like(queries)[None])
        torch.save({"out": out, "jv": jv}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def _empirical_data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(217, 11, generator=g), torch.randn(5, 11, generator=g), torch.rand(5, generator=g) + 0.2


def test_sharded_empirical_denoiser_equals_one_pass(tmp_path):
    result = str(tmp_path / "emp")
    mp.start_processes(_empirical_worker, args=(str(tmp_path / "init"), result), nprocs=WORLD, join=True,
                       start_method="spawn")
    data, queries, sigma = _empirical_data()
    whole = fastgauss.EmpiricalDenoiser(data)
    _, jv = whole.jvp(queries, sigma, torch.ones_like(queries)[None])
    for rank in range(WORLD):
        got = torch.load(f"{result}.{rank}")
        assert rel_err(got["out"], ref.empirical_denoiser(queries, sigma, data)) < 5e-5
        assert rel_err(got["jv"], jv) < 1e-4


def _step_gradients(trainer):
    """Gradients of the first step's loss, through the trainer's (DDP or plain) model."""
    from fastgauss.edm import edm_loss
    from fastgauss.edm.splits import batch_at
    from fastgauss._core.seeds import seeded_generator

    batch = batch_at(trainer.train_set, trainer.config.batch_size, 0, trainer.config.seed)
    loss = edm_loss(trainer.forward_model, batch, generator=seeded_generator(trainer.config.seed, 0, 1),
                    sigma_data=trainer.model.sigma_data,
                    shard=(trainer.rank, trainer.world) if trainer.world > 1 else None)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in trainer.model.named_parameters()}
    trainer.optimizer.zero_grad(set_to_none=True)
    return grads


def _train_config(out):
    from fastgauss.edm.train import TrainConfig

    return TrainConfig(n=64, width=8, steps=4, batch_size=16, warmup=2, eval_every=4, out=out)


def _train_worker(rank: int, init_file: str, out: str, result_file: str) -> None:
    from fastgauss.data import load_dataset
    from fastgauss.edm.train import Trainer

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        trainer = Trainer(_train_config(out), load_dataset("digits"))
        grads = _step_gradients(trainer)
        trainer.run(progress=False, measure=False)
        torch.save({"grads": grads, "weights": trainer.model.state_dict()}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_training_equals_one_process_on_the_whole_batch(tmp_path):
    from fastgauss.data import load_dataset
    from fastgauss.edm.train import Trainer

    result = str(tmp_path / "weights")
    mp.start_processes(_train_worker, args=(str(tmp_path / "init"), str(tmp_path / "ddp"), result), nprocs=WORLD,
                       join=True, start_method="spawn")
    single = Trainer(_train_config(str(tmp_path / "one")), load_dataset("digits"))
    grads = _step_gradients(single)
    single.run(progress=False, measure=False)
    ranks = [torch.load(f"{result}.{r}") for r in range(WORLD)]
    for key, value in grads.items():  # each process's share, averaged by DDP, is the whole batch's gradient
        assert torch.allclose(ranks[0]["grads"][key], value, rtol=1e-4, atol=1e-7), key
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0]["weights"][key], ranks[1]["weights"][key]), key  # the processes agree
        # Adam divides by the gradient's running scale: float-level gradient differences on
        # near-zero gradients move a weight by a few percent of one step (lr = 2e-3)
        assert torch.allclose(ranks[0]["weights"][key], value, atol=5e-4), key
    assert (tmp_path / "ddp" / "checkpoint.pt").exists()
