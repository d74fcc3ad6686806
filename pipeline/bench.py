"""Loader throughput measured the same way for every loader: steady state, nothing left out.

One stream of batches runs across epoch boundaries (so an epoch of one step cannot stall the
count); the first `warmup` batches are not timed (start-up: pipeline build, worker fork,
buffer fill); the next `batches` are, including any epoch change inside them (a new epoch's
pipeline build is a cost training pays too) and including whatever the prefetch queue had
filled during the warm-up (a few batches, so `batches` should be tens of prefetch depths).
"""

from __future__ import annotations

import itertools
import os
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch


class Epochs:
    """A loader's batches, epoch after epoch, as one stream; `starts` counts the epochs begun.

    The training loader builds one DALI pipeline (or forks its DataLoader workers) per epoch,
    started while the previous epoch runs (`pipeline.ahead`): `starts` lets a caller say how many
    epoch starts fell inside a timed window (their builds ran beside the timed batches).
    Anything with `.epoch(e)` works (TrainLoader, EvalLoader-like test loaders).
    """

    def __init__(self, loader) -> None:  # noqa: ANN001
        self.loader, self.starts = loader, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in itertools.count():
            self.starts += 1
            yield from self.loader.epoch(epoch)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loader, batches: int, warmup: int = 5) -> dict:  # noqa: ANN001
    """Images/s of `loader` (anything with `.epoch(e)` and `.steps_per_epoch`) in steady state."""
    if batches < 1 or warmup < 0:
        raise ValueError(f"batches {batches} must be >= 1 and warmup {warmup} >= 0")
    stream = iter(Epochs(loader))
    x = None
    for _ in range(warmup):
        x, _y = next(stream)
    if x is not None:
        sync(x.device)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        x, _y = next(stream)
        images += x.shape[0]
    sync(x.device)
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


def _live_children_seconds() -> float:
    """CPU time of this process's running children (DataLoader workers), from /proc (Linux).

    A worker still running is not in RUSAGE_CHILDREN; once reaped, its whole time is, so
    (reaped + live) before and after a window differ by exactly the children's time in it."""
    me, tick, total = os.getpid(), os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile, or no /proc
        if int(fields[1]) == me:  # fields[1]: ppid; [11:15]: utime, stime, cutime, cstime
            total += sum(int(f) for f in fields[11:15])
    return total / tick


def cpu_seconds() -> float:
    """User + system time of this process (DALI's and torch's threads included) and of its
    children, reaped or still running (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_seconds()


def cpu_efficiency(loader, epochs: int = 1) -> dict:  # noqa: ANN001
    """Images per CPU-second over whole epochs (start-up included, workers reaped at each end).

    Wall-clock rates on a machine that others load measure the load as much as the loader;
    CPU time spent per image does not depend on it (much), and on an otherwise idle machine
    with C cores the wall-clock rate approaches C times this figure when the loader keeps them
    all busy."""
    cpu0, wall0, images = cpu_seconds(), time.perf_counter(), 0
    for epoch in range(epochs):
        for x, _y in loader.epoch(epoch):
            images += x.shape[0]
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {"images": images, "cpu_seconds": cpu, "img_per_cpu_s": images / cpu, "img_per_s": images / wall}


def epoch_boundaries(loader, epochs: int) -> dict:  # noqa: ANN001
    """The gap at each epoch boundary against the steady batch time, from one run of `epochs` epochs.

    `loader`: anything with `.epoch(e)` (a TrainLoader, made with `epochs=epochs` so nothing is
    started after the last). A batch's time is when it reaches the consumer (device work
    waited for). Steady: the median interval between consecutive batches of one epoch. Gap:
    from the last batch of epoch e to the first of e + 1 — what a boundary costs training.
    Epoch: the median span from an epoch's first batch to its last, so that work moved out of
    the gap into the epoch (a build in the background on busy cores) shows up there.
    """
    if epochs < 2:
        raise ValueError(f"epochs {epochs} must be >= 2 (a boundary needs two epochs)")
    arrivals: list[list[float]] = []
    start = time.perf_counter()
    for e in range(epochs):
        times = []
        for x, _y in loader.epoch(e):
            sync(x.device)
            times.append(time.perf_counter())
        arrivals.append(times)
    intervals = [b - a for times in arrivals for a, b in itertools.pairwise(times)]
    gaps = [arrivals[e + 1][0] - arrivals[e][-1] for e in range(epochs - 1)]
    steady = statistics.median(intervals) if intervals else float("nan")
    return {
        "steps_per_epoch": len(arrivals[0]),
        "first_batch_s": arrivals[0][0] - start,
        "steady_s": steady,
        "gaps_s": gaps,
        "gap_s": statistics.median(gaps),
        "gap_max_s": max(gaps),
        "gap_in_batches": statistics.median(gaps) / steady,
        "epoch_s": statistics.median(times[-1] - times[0] for times in arrivals),
    }


def pass_starts(loader, passes: int) -> dict:  # noqa: ANN001
    """Time to the first batch of each of `passes` passes over an eval loader, and a pass's length."""
    firsts, spans = [], []
    for _ in range(passes):
        start = first = time.perf_counter()
        for i, (x, _y) in enumerate(loader):
            sync(x.device)
            if i == 0:
                first = time.perf_counter()
        firsts.append(first - start)
        spans.append(time.perf_counter() - start)
    return {
        "first_batch_s": firsts,
        "later_first_s": statistics.median(firsts[1:] or firsts),
        "pass_s": statistics.median(spans),
    }
