"""Training throughput on CPU, with and without the periodic measurements.

    pytest benchmarks/edm/bench_train.py -s

Trains the demo's generalizing configuration (digits, width 32, batch 128) for one default eval
interval (1000 steps) twice: without measurements, and with the measurement at the end of the
interval. Prints images per second for both and the share of time the measurements cost; the
goal is under 10 % at the default interval.
"""

import time

import torch

from fastgauss.data import load_dataset
from fastgauss.edm.train import TrainConfig, Trainer


def _timed_run(tmp_path, measure: bool) -> float:
    config = TrainConfig(dataset="digits", width=32, steps=1000, batch_size=128, eval_every=1000,
                         out=str(tmp_path / ("measured" if measure else "plain")))
    trainer = Trainer(config, load_dataset("digits"))
    if measure:
        trainer.references()  # built once per run at its start, as in training: not per interval
    start = time.perf_counter()
    trainer.run(progress=False, measure=measure)
    return time.perf_counter() - start


def test_measurements_cost_under_a_tenth_of_training(tmp_path):
    torch.set_num_threads(2)
    plain = _timed_run(tmp_path, measure=False)
    measured = _timed_run(tmp_path, measure=True)
    images = 1000 * 128
    share = (measured - plain) / measured
    print(f"\ntraining throughput: {images / plain:.0f} img/s without measurements, {images / measured:.0f} img/s "
          f"with them every 1000 steps; measurements take {100 * share:.1f} % of the time")
    assert share < 0.10
