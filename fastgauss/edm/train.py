"""Reference EDM training loop that measures, as it trains, how close the network is to the
Gaussian denoiser and to the memorizing (empirical) denoiser of its training set.

Every batch and every noise draw is a function of (seed, step) alone, so a resumed run
computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._core.seeds import seeded_generator
from ..data import load_dataset
from .precond import EMA, EDMDenoiser, edm_loss
from ..ops.empirical import EmpiricalDenoiser
from ..ops.gaussian.module import GaussianDenoiser
from ..diagnostics.linearity import denoiser_rmse, linearity_score
from ..ops.moments.op import Moments
from ..ops.neighbors.op import gl_score, memorization_ratio
from .sampling import edm_sigmas, sample_euler
from .splits import batch_at, subset
from .unet import SmallUNet

_FORMAT = "fastgauss-train"
_VERSION = 1


@dataclass
class TrainConfig:
    """What defines a run. ``identity`` fields must match to resume from a checkpoint.

    >>> import fastgauss
    >>> fastgauss.TrainConfig(n=64, width=8, steps=2).identity
    ('dataset', 'n', 'width', 'seed', 'batch_size')
    >>> fastgauss.TrainConfig(steps=0)
    Traceback (most recent call last):
    ValueError: steps: expected an integer >= 1, got 0
    """

    dataset: str = "digits"
    n: int | None = None  # training-set size: a deterministic subset; None keeps all
    scale: str | None = None  # range of a float .npy dataset (load_dataset's scale=); None: already [-1, 1]
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

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "eval_samples", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"n: expected None (all) or an integer >= 1, got {self.n!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a finite learning rate > 0, got {self.lr!r}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"warmup: expected an integer >= 0, got {self.warmup!r}")


def _init_weights(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """PyTorch's default initialization of every Linear, Conv and GroupNorm in ``model``, drawn from
    ``generator`` in module order: the weights ``torch.manual_seed(s)`` followed by building the model
    would give, without touching the global RNG. Returns ``model`` (CPU, initialized in place)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                torch.nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    torch.nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, torch.nn.GroupNorm) and module.affine:
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)
    return model


def _build_network(channels: int, width: int, seed: int) -> torch.nn.Module:
    """SmallUNet with weights drawn from a local generator seeded with ``seed`` (the global RNG is untouched)."""
    with torch.device("meta"):  # shapes only: no random draws from the global generator
        net = SmallUNet(channels=channels, width=width)
    net = _init_weights(net.to_empty(device="cpu"), torch.Generator().manual_seed(seed))
    torch.nn.init.zeros_(net.out[-1].weight)  # SmallUNet starts as the identity's residual: F = 0
    torch.nn.init.zeros_(net.out[-1].bias)
    return net


class Trainer:
    """One EDM model (SmallUNet of ``config.width``) on ``data`` ([N, C, H, W] in [-1, 1]).

    ``run()`` trains to ``config.steps`` with a progress bar, writes checkpoints atomically to
    ``config.out``/checkpoint.pt every eval interval and at the end, and appends measurements
    to ``config.out``/log.jsonl. ``Trainer.resume(path)`` continues a run.

    >>> import tempfile, fastgauss
    >>> config = fastgauss.TrainConfig(n=64, width=8, steps=2, batch_size=16, out=tempfile.mkdtemp())
    >>> trainer = fastgauss.Trainer(config)
    >>> trainer.run(progress=False, measure=False)
    []
    >>> trainer.step, (trainer.out / "checkpoint.pt").exists()
    (2, True)
    """

    def __init__(self, config: TrainConfig, data: torch.Tensor | None = None, *, device="cpu"):
        self.config = config
        data = load_dataset(config.dataset, scale=config.scale) if data is None else data
        self.train_set = (subset(data, config.n, seed=config.seed) if config.n else data).to(device)
        self.model = EDMDenoiser(_build_network(self.train_set.shape[1], config.width, config.seed)).to(device)
        self.ema = EMA(self.model, config.ema_decay)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.world, self.rank = _world()
        # Under torchrun: DDP averages the gradients of each process's share of every batch.
        self.forward_model = self.model if self.world == 1 else torch.nn.parallel.DistributedDataParallel(self.model)
        self.step = 0
        self.out = Path(config.out)
        self.saved_step: int | None = None  # the step of the last checkpoint written or resumed from
        self._references = None

    # ------------------------------------------------------------------ training
    def train_step(self) -> float:
        lr = self.config.lr * min(1.0, (self.step + 1) / max(1, self.config.warmup))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch_at(self.train_set, self.config.batch_size, self.step, self.config.seed)
        loss = edm_loss(self.forward_model, batch, generator=seeded_generator(self.config.seed, self.step, 1),
                        sigma_data=self.model.sigma_data, shard=(self.rank, self.world) if self.world > 1 else None)
        if not torch.isfinite(loss):
            where = ("no checkpoint has been written yet" if self.saved_step is None else
                     f"the last good checkpoint is {self.out / 'checkpoint.pt'} (step {self.saved_step})")
            raise FloatingPointError(f"non-finite loss at step {self.step} (learning rate {lr:g}); {where}")
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
                   disable=not progress or self.rank != 0, unit="step")  # under torchrun only rank 0 shows one
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
                self.saved_step = self.step
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
        noise = lambda stream: seeded_generator(cfg.seed, 0, 100 + stream)  # noqa: E731  held-out, fixed
        count = min(cfg.eval_samples, n)
        distances = denoiser_rmse(net, {"gaussian": gaussian, "empirical": empirical}, self.train_set,
                                  cfg.eval_sigmas, n=count, generator=noise(0))  # the network runs once
        to_gauss, to_emp = distances["gaussian"], distances["empirical"]
        linear = linearity_score(net, self.train_set, cfg.eval_sigmas, n=max(1, min(64, n // 2)),
                                 generator=noise(1))
        latents = torch.randn((cfg.eval_samples, *self.train_set.shape[1:]), generator=noise(2)).to(self.train_set)
        samples = sample_euler(net, latents, edm_sigmas(10))
        fresh = gaussian_samples(gaussian, cfg.eval_samples, generator=noise(3))  # the GL score's reference
        record = {"step": self.step, "loss": loss, "n": n, "width": cfg.width, "sigma": list(cfg.eval_sigmas),
                  "rmse_gaussian": to_gauss.value.tolist(), "rmse_empirical": to_emp.value.tolist(),
                  "linearity": linear.value.tolist(), "gl_score": gl_score(samples, self.train_set),
                  "gl_score_gaussian": gl_score(fresh, self.train_set),
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
        trainer.step = trainer.saved_step = int(state["step"])
        return trainer


def gaussian_samples(gaussian: GaussianDenoiser, count: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` fresh samples of N(mu, Sigma) with the Gaussian denoiser's mean and covariance:
    mu + U diag(sqrt(lambda)) z (+ sqrt(lam_rest) times the part of z outside span(U)), z ~ N(0, I)
    drawn in float64 on the CPU from ``generator``. Returns [count, *feature_shape] in the mean's
    dtype and device. These are the reference of the GL score (fastgauss.verdict)."""
    u, lam = gaussian.eigvecs.double().cpu(), gaussian.eigvals.double().cpu()
    d, rest = u.shape[0], float(gaussian.lam_rest)
    z = torch.randn(count, d, generator=generator, dtype=torch.float64)
    coeffs = z @ u  # [count, r]
    x = gaussian.mean.double().cpu() + (coeffs * lam.clamp_min(0).sqrt()) @ u.T
    if rest > 0:
        x = x + math.sqrt(rest) * (z - coeffs @ u.T)
    return x.reshape(count, *gaussian.feature_shape).to(gaussian.mean)


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

