"""Reference EDM training loop that measures, as it trains, how close the network is to the
Gaussian denoiser and to the memorizing (empirical) denoiser of its training set.

Every batch and every noise draw is a function of (seed, step) alone, so a resumed run
computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import load_dataset
from .edm import EMA, EDMDenoiser, edm_loss
from .empirical import EmpiricalDenoiser
from .gaussian_denoiser import GaussianDenoiser
from .linearity import denoiser_rmse, linearity_score
from .moments import Moments
from .neighbors import gl_score, memorization_ratio
from .sampling import edm_sigmas, sample_euler
from .splits import batch_at, subset
from .unet import SmallUNet

_FORMAT = "fastgauss-train"
_VERSION = 1


@dataclass
class TrainConfig:
    """What defines a run. ``identity`` fields must match to resume from a checkpoint."""

    dataset: str = "digits"
    n: int | None = None  # training-set size: a deterministic subset; None keeps all
    width: int = 32
    steps: int = 4000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    ema_decay: float = 0.999
    seed: int = 0
    eval_every: int = 1000
    eval_sigmas: tuple = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    eval_samples: int = 128
    out: str = "fastgauss-out/train"
    identity: tuple = field(default=("dataset", "n", "width", "seed", "batch_size"), repr=False)


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 7 + stream) % (2**63 - 1))


class Trainer:
    """One EDM model (SmallUNet of ``config.width``) on ``data`` ([N, C, H, W] in [-1, 1]).

    ``run()`` trains to ``config.steps`` with a progress bar, writes checkpoints atomically to
    ``config.out``/checkpoint.pt every eval interval and at the end, and appends measurements
    to ``config.out``/log.jsonl. ``Trainer.resume(path)`` continues a run.
    """

    def __init__(self, config: TrainConfig, data: torch.Tensor | None = None, *, device="cpu"):
        self.config = config
        data = load_dataset(config.dataset) if data is None else data
        self.train_set = (subset(data, config.n, seed=config.seed) if config.n else data).to(device)
        torch.manual_seed(config.seed)
        self.model = EDMDenoiser(SmallUNet(channels=self.train_set.shape[1], width=config.width)).to(device)
        self.ema = EMA(self.model, config.ema_decay)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.world, self.rank = _world()
        # Under torchrun: DDP averages the gradients of each process's share of every batch.
        self.forward_model = self.model if self.world == 1 else torch.nn.parallel.DistributedDataParallel(self.model)
        self.step = 0
        self.out = Path(config.out)
        self._references = None

    # ------------------------------------------------------------------ training
    def train_step(self) -> float:
        lr = self.config.lr * min(1.0, (self.step + 1) / max(1, self.config.warmup))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch_at(self.train_set, self.config.batch_size, self.step, self.config.seed)
        loss = edm_loss(self.forward_model, batch, generator=_step_generator(self.config.seed, self.step, 1),
                        sigma_data=self.model.sigma_data, shard=(self.rank, self.world) if self.world > 1 else None)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}; the last good checkpoint is "
                                     f"{self.out / 'checkpoint.pt'}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.item()

    def run(self, *, steps: int | None = None, progress: bool = True, measure: bool = True) -> list[dict]:
        """Train until ``steps`` (default config.steps); returns the measurements taken."""
        target = self.config.steps if steps is None else steps
        self.out.mkdir(parents=True, exist_ok=True)
        records = []
        bar = tqdm(total=target, initial=self.step, desc=f"train n={self.train_set.shape[0]} w={self.config.width}",
                   disable=not progress, unit="step")
        started, loss = time.perf_counter(), float("nan")
        done_here = 0
        while self.step < target:
            loss = self.train_step()
            done_here += 1
            bar.update(1)
            rate = done_here * self.config.batch_size / max(1e-9, time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.4f}", img_per_s=f"{rate:.0f}", refresh=False)
            if (self.step % self.config.eval_every == 0 or self.step == target) and self.rank == 0:
                if measure:
                    records.append(self.measure(loss))
                self.save(self.out / "checkpoint.pt")
        bar.close()
        return records

    # --------------------------------------------------------------- measuring
    def references(self):
        """(GaussianDenoiser, EmpiricalDenoiser) of the training set, built once by streaming it."""
        if self._references is None:
            moments = Moments.from_loader(self.train_set.split(1024), progress=False)
            self._references = (GaussianDenoiser.from_moments(moments).to(self.train_set.device),
                                EmpiricalDenoiser(self.train_set))
        return self._references

    @torch.no_grad()
    def measure(self, loss: float | None = None) -> dict:
        """Per-sigma RMSE of the EMA network to both references, its linearity, and the GL score
        and memorization ratio of samples from fixed latents; appended to log.jsonl."""
        cfg, net = self.config, self.ema.model.eval()
        gaussian, empirical = self.references()
        n = self.train_set.shape[0]
        noise = lambda stream: _step_generator(cfg.seed, 0, 100 + stream)  # noqa: E731  held-out, fixed
        count = min(cfg.eval_samples, n)
        distances = denoiser_rmse(net, {"gaussian": gaussian, "empirical": empirical}, self.train_set,
                                  cfg.eval_sigmas, n=count, generator=noise(0))  # the network runs once
        to_gauss, to_emp = distances["gaussian"], distances["empirical"]
        linear = linearity_score(net, self.train_set, cfg.eval_sigmas, n_pairs=max(1, min(64, n // 2)),
                                 generator=noise(1))
        latents = torch.randn((cfg.eval_samples, *self.train_set.shape[1:]), generator=noise(2)).to(self.train_set)
        samples = sample_euler(net, latents, edm_sigmas(10))
        record = {"step": self.step, "loss": loss, "n": n, "width": cfg.width, "sigma": list(cfg.eval_sigmas),
                  "rmse_gaussian": to_gauss.value.tolist(), "rmse_empirical": to_emp.value.tolist(),
                  "linearity": linear.value.tolist(), "gl_score": gl_score(samples, self.train_set),
                  "memorization_ratio": memorization_ratio(samples, self.train_set) if n >= 2 else float("nan")}
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        config = {k: v for k, v in asdict(self.config).items() if k != "identity"}
        return {"format": _FORMAT, "version": _VERSION, "config": config, "step": self.step,
                "model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def save(self, path) -> Path:
        """Atomic: written to a temporary file, flushed, then renamed over ``path``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(self.state_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @classmethod
    def resume(cls, path, config: TrainConfig | None = None, data: torch.Tensor | None = None, *, device="cpu"):
        """Continue a run from its checkpoint; ``config`` (if given) must share its identity fields."""
        state = load_checkpoint(path)
        saved = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
        if config is not None:
            for key in saved.identity:
                if getattr(saved, key) != getattr(config, key):
                    raise ValueError(f"checkpoint {path}: was trained with {key}={getattr(saved, key)!r}, "
                                     f"this run asks for {key}={getattr(config, key)!r}")
        trainer = cls(config or saved, data, device=device)
        trainer.model.load_state_dict(state["model"])
        trainer.ema.model.load_state_dict(state["ema"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
        return trainer


def _world() -> tuple[int, int]:
    """(world size, rank) of torch.distributed when it is initialized, else (1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def load_checkpoint(path) -> dict:
    """A training checkpoint's contents; ValueError naming the path when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for truncated or foreign files
        raise ValueError(f"checkpoint {path}: unreadable, perhaps truncated or not a checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path}: not a fastgauss training checkpoint")
    if state.get("version") != _VERSION:
        raise ValueError(f"checkpoint {path}: version {state.get('version')!r}, this fastgauss reads {_VERSION}")
    return state

