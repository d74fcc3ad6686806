"""Training throughput measured one way for every input: the real step, like with like.

Used by bench/train_throughput.py (DALI vs synthetic vs reference input on one machine) and by
bench/gpu_check.py (the one-GPU check). Every input goes through `trainer.train.train_epoch`
(forward, loss, backward, the paper's SGD) from one started stream of batches: the same `warm`
untimed steps first (pipeline build, worker fork, kernel choice, allocator), then the same
`steps` timed ones. The stream runs across epochs, so a small dataset never stalls the count;
`Rate.starts` says how many epoch starts (pipeline builds) fell inside the timed window.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from pipeline.bench import cpu_seconds, sync
from trainer.config import TrainConfig
from trainer.distributed import Env
from trainer.runstate import Position, Trainer
from trainer.train import build, train_epoch


class Running:
    """A loader over one started batch stream: each train_epoch continues where the last ended."""

    def __init__(self, stream: Iterator, steps: int):
        self.stream, self.steps_per_epoch = stream, steps

    def epoch(self, _epoch: int, start_step: int = 0) -> Iterator:
        return itertools.islice(self.stream, self.steps_per_epoch - start_step)


@dataclass
class Rate:
    """One timed window: wall-clock and CPU-time rates, and the epoch starts inside it."""

    img_per_s: float
    img_per_cpu_s: float  # images per CPU-second of this process and its workers: load-independent
    seconds: float
    cpu_seconds: float
    starts: int  # epoch starts (pipeline builds) timed; 0 unless the stream is a pipeline.bench.Epochs


def train_rate(cfg: TrainConfig, env: Env, batches: Iterable, warm: int, steps: int) -> Rate:
    """The real training step's rate over `steps` steps of `batches`, after `warm` untimed ones.

    `batches`: an endless iterable of (x, y), e.g. pipeline.bench.Epochs(loader) or
    itertools.repeat((x, y)) for synthetic input; a fresh model (seed 0) is built for each call.
    """
    if warm < 1 or steps < 1:
        raise ValueError(f"warm {warm} and steps {steps} must be >= 1 (warm-up holds the pipeline build)")
    torch.manual_seed(0)
    trainer = Trainer(cfg, env, {}, build(cfg, env))
    net, device, stream = trainer.model, env.devices[0], iter(batches)
    train_epoch(trainer, net, Running(stream, warm), 0, warm, False)
    trainer.pos = Position()
    sync(device)
    starts0, cpu0, start = getattr(batches, "starts", 0), cpu_seconds(), time.perf_counter()
    train_epoch(trainer, net, Running(stream, steps), 1, steps, False)
    sync(device)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    images = steps * env.batch
    return Rate(
        images / seconds, images / max(cpu, 1e-9), seconds, cpu, getattr(batches, "starts", 0) - starts0
    )
