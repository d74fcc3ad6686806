"""Loader throughput measured the same way for every loader: steady state, nothing left out.

One stream of batches runs across epoch boundaries (so an epoch of one step cannot stall the
count); the first `warmup` batches are not timed (start-up: pipeline build, worker fork,
buffer fill); the next `batches` are, including any epoch change inside them (a new epoch's
pipeline build is a cost training pays too) and including whatever the prefetch queue had
filled during the warm-up (a few batches, so `batches` should be tens of prefetch depths).
"""

from __future__ import annotations

import itertools
import resource
import time
from collections.abc import Iterator

import torch


def _stream(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    for epoch in itertools.count():
        yield from loader.epoch(epoch)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def measure(loader, batches: int, warmup: int = 5) -> dict:  # noqa: ANN001
    """Images/s of `loader` (anything with `.epoch(e)` and `.steps_per_epoch`) in steady state."""
    if batches < 1 or warmup < 0:
        raise ValueError(f"batches {batches} must be >= 1 and warmup {warmup} >= 0")
    stream = _stream(loader)
    x = None
    for _ in range(warmup):
        x, _y = next(stream)
    if x is not None:
        _sync(x)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        x, _y = next(stream)
        images += x.shape[0]
    _sync(x)
    elapsed = time.perf_counter() - start
    stream.close()
    return {
        "batches": batches,
        "warmup": warmup,
        "images": images,
        "seconds": elapsed,
        "img_per_s": images / elapsed,
        "steps_per_epoch": loader.steps_per_epoch,
    }


def _cpu_seconds() -> float:
    """User + system time of this process and of its reaped children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_efficiency(loader, epochs: int = 1) -> dict:  # noqa: ANN001
    """Images per CPU-second over whole epochs (start-up included, workers reaped at each end).

    Wall-clock rates on a machine that others load measure the load as much as the loader;
    CPU time spent per image does not depend on it (much), and on an otherwise idle machine
    with C cores the wall-clock rate approaches C times this figure when the loader keeps them
    all busy."""
    cpu0, wall0, images = _cpu_seconds(), time.perf_counter(), 0
    for epoch in range(epochs):
        for x, _y in loader.epoch(epoch):
            images += x.shape[0]
    cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {"images": images, "cpu_seconds": cpu, "img_per_cpu_s": images / cpu, "img_per_s": images / wall}
