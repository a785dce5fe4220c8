"""``fastgauss train``: train a small EDM model and measure it against the references (torchrun too)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from .common import (DEFAULT_OUT, UsageError, add_model_arguments, add_run_arguments, check_size, int_at_least,
                     is_main_process, load_data, positive_float, positive_int, say)

def _init_distributed(device: str) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def run(args: argparse.Namespace) -> int:
    if _init_distributed(args.device):
        import torch.distributed as dist

        try:
            code = _run_on_this_process(args)
            # Rank 0 measures and writes after the last step: the others wait for it here instead of
            # tearing the group down under it (a rank torn down early aborted, exit -6, in CI).
            dist.barrier()
            return code
        finally:
            dist.destroy_process_group()
    return _run_on_this_process(args)


def _run_on_this_process(args: argparse.Namespace) -> int:
    from .._core.plots import plot_training_curve
    from ..edm.train import TrainConfig, Trainer

    data = load_data(args)
    if args.n is not None:
        check_size("--n", args.n, data, args.dataset)
    config = TrainConfig(dataset=args.dataset, n=args.n, width=args.width, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                         scale=args.scale,
                         out=str(args.out or DEFAULT_OUT / f"train-{Path(args.dataset).stem}-n{args.n or 'all'}-w{args.width}"))
    checkpoint = Path(config.out) / "checkpoint.pt"
    if args.resume:
        if not checkpoint.exists():
            raise UsageError(f"--resume: no checkpoint at {checkpoint} to continue from (leave out --resume to "
                             "start a new run, or pass the run folder with --out)")
        trainer = Trainer.resume(checkpoint, config, data, device=args.device)
        if trainer.step >= args.steps:
            raise UsageError(f"--steps {args.steps}: the checkpoint {checkpoint} is already at step {trainer.step}; "
                             "pass a larger --steps to continue")
        say(f"resuming {checkpoint} at step {trainer.step}")
    else:
        trainer = Trainer(config, data, device=args.device)
    try:
        records = trainer.run(progress=not args.quiet)
    except FloatingPointError as exc:
        raise UsageError(f"{exc}; try a smaller --lr (this run: --lr {args.lr:g})") from None
    if not is_main_process():
        return 0
    if records:
        last = records[-1]
        print(f"step {last['step']}: GL score {last['gl_score']:.3f} (fresh N(mu, Sigma) samples: "
              f"{last['gl_score_gaussian']:.3f}), memorization ratio {last['memorization_ratio']:.3f}")
    log = Path(config.out) / "log.jsonl"
    written = [str(checkpoint), str(log)]
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if history:
        try:
            written.append(str(plot_training_curve(Path(config.out) / "curve.png", history)))
        except ImportError:
            print("(install fastgauss[plot] for a curve of the measurements)")
    print(f"wrote {', '.join(written)}")
    return 0


def add_parser(commands) -> None:
    train = commands.add_parser("train", help="train a small EDM model and measure it against the references",
                                description="Train an EDM model (SmallUNet) on a dataset, measuring every "
                                            "--eval-every steps its distance to the Gaussian and memorizing "
                                            "denoisers, its linearity and its samples' memorization; writes "
                                            "checkpoint.pt, log.jsonl and curve.png to the run folder.")
    add_model_arguments(train, steps=4000)
    train.add_argument("--n", "--train-size", dest="n", type=int_at_least(2),
                       help="training-set size (a deterministic subset; default: all); under torchrun write "
                            "--train-size, since torchrun reads an abbreviated --n as one of its own options")
    train.add_argument("--batch-size", type=positive_int, default=128, help="images per training step")
    train.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (after warm-up)")
    train.add_argument("--seed", type=int, default=0, help="seed of the subset, the weights, batches and noise")
    train.add_argument("--eval-every", type=positive_int, default=1000, help="steps between measurements")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    add_run_arguments(train, out=None, out_help="run folder (default: fastgauss-out/train-DATASET-nN-wWIDTH)",
                      samples=False)
    train.set_defaults(run=run)
