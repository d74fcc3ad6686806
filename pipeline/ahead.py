"""Epoch boundaries that cost nothing: the next epoch's batches, started while this one runs.

Starting an epoch costs the training loader a pipeline build: DALI parses 500 shard indexes,
sets its decoders up and fills its 4,096-sample shuffle buffer before the first batch (the
reference loader forks its DataLoader workers, which then decode a batch each). Measured on the
CPU loader at 500 shards, that was ~20-30 steady batches per epoch boundary (bench/epoch_boundary.py).

`Started` runs that start-up ahead of time, once per epoch, while the previous epoch is still
being consumed:

- DALI: a background thread builds the next epoch's pipeline and runs its first iteration
  (which also queues the prefetch iterations). DALI keeps the pipeline being defined in a
  thread-local, so graphs can be defined and built off the main thread; the pipeline is then
  used by one thread at a time (the builder, then the consumer, handed over by `join`).
- Reference: the DataLoader iterator is created in the caller's thread (forking is left to the
  main thread: a fork from a side thread copies whatever locks the main thread holds), and its
  workers begin decoding at once.

The next epoch's batches do not depend on when or in which thread they were started: a
pipeline is a pure function of (seed, epoch, rank, world) and nothing else, so the exactness
of an epoch and of a mid-epoch resume stays what it was. At most one epoch is started ahead.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator

import torch


class Started:
    """The batches of one epoch (`key`), begun now: `take()` hands them over, `close()` drops them."""

    def __init__(
        self,
        key: int,
        make: Callable[[], Iterator],
        background: bool,
        device: torch.device | None = None,
    ):
        self.key = key
        self._batches: Iterator | None = None
        self._first: tuple | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._prime, args=(make, device), name=f"loader-epoch-{key}", daemon=False
            )
            self._thread.start()
        else:
            try:
                self._batches = make()
            except Exception as e:  # noqa: BLE001 - raised by take(), where the epoch is asked for
                self._error = e

    def _prime(self, make: Callable[[], Iterator], device: torch.device | None) -> None:
        """Thread body: build and run up to the first batch; an error is kept for `take`."""
        try:
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)  # the CUDA device is per thread
            self._batches = make()
            self._first = next(self._batches)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread by take()
            self._error = e

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take(self) -> Iterator:
        """The epoch's batches, the first one already made (waits for the build if not done)."""
        self._join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        batches, self._batches = self._batches, None
        if self._first is None:
            return batches
        first, self._first = self._first, None
        return itertools.chain([first], batches)

    def close(self) -> None:
        """Drop the started epoch (a different epoch was asked for, or the loader is closed)."""
        self._join()
        batches, self._batches, self._first = self._batches, None, None
        close = getattr(batches, "close", None)
        if close is not None:
            close()


class Retired:
    """Finished epochs' pipelines (or DataLoader iterators), dropped by the next epoch's start.

    A teardown holds the GIL (a DALI pipeline: ~10 ms) or joins worker processes: done as the
    epoch ends, it would sit in the boundary. Held here, not by the loader: the epochs'
    generators refer to this, and a loader <-> generator cycle would keep DataLoader workers
    alive until a gc pass (which then joins each with a timeout)."""

    def __init__(self) -> None:
        self.items: list = []

    def add(self, *finished: object) -> None:
        self.items.extend(finished)

    def drop(self) -> None:
        items, self.items = self.items, []
        del items


def drain(batches: Iterator, count: int, retired: Retired | None) -> Iterator:
    """`count` items of an already started iterator (a DataLoader's: workers forked), as a
    closable generator; then the iterator is retired, not asked for more (asking would shut its
    workers down at once, in the boundary)."""
    for _ in range(count):
        yield next(batches)
    if retired is not None:
        retired.add(batches)
