"""The reference loader: the same semantics in plain PyTorch (webdataset + DataLoader + OpenCV).

Three jobs: the oracle the DALI tests compare against, the fallback where DALI is not
installed, and the baseline of `bench/loader_throughput.py`. Each sample goes through
`augment.reference_augment`, the numpy statement of the paper's augmentation.

Splitting. Eval: shards are dealt to ranks (`urls[rank::world]`) and then to DataLoader
workers, so an eval epoch sees every sample exactly once across all ranks and workers. Train: as
DALI does, each rank takes a contiguous sample range of the epoch's permuted shard list
(`pipeline.order`), shuffled in a buffer (webdataset's shuffle, on the index entries), and the
epoch's first `steps * batch` of it; worker w reads batches w, w + W, ... by the index offsets
(the order in which DataLoader collects them), so the batches do not depend on the number of
workers. Each sample's random draws are seeded by (seed, position in the epoch) for the same
reason.
"""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.augment import LIGHTING_STD, Normalization, eval_crops, reference_augment
from pipeline.errors import WORKER, DamagedSampleError
from pipeline.order import rank_shards
from shards import layout
from shards.index import Member, read_index


def _split(urls, rank: int, world: int):
    return list(urls)[rank::world]


def _before_fork() -> None:
    """One OpenCV thread, set in the parent: the workers are the parallelism, and a worker that
    resizes OpenCV's thread pool inherited across fork deadlocks (in pthread_cond_destroy)."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _decode(sample: dict) -> tuple[np.ndarray, int]:
    """RGB pixels and label of a stored sample; DamagedSampleError naming shard and key if not."""

    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    try:
        label = int(sample["cls"])
        bgr = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    except (KeyError, ValueError, cv2.error) as e:
        raise DamagedSampleError(f"{where}: unreadable ({e})") from None
    if bgr is None:
        raise DamagedSampleError(f"{where}: the stored JPEG does not decode (damaged after sharding?)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label


class Augment:
    """Picklable per-sample transform; train draws are seeded per (seed, position in the stream)."""

    def __init__(
        self,
        *,
        train: bool,
        size: int,
        crop: int,
        lighting: np.ndarray | None,
        norm: Normalization,
        ten_crop: bool,
        scale: float = 1.0,
        seed: int,
        mirror: bool = True,
    ):
        self.mirror = mirror
        self.train, self.size, self.crop, self.ten_crop, self.seed = train, size, crop, ten_crop, seed
        self.lighting, self.norm = lighting, norm
        self.scale = scale

    def _one(self, rgb: np.ndarray, x: int, y: int, flip: bool, shift: np.ndarray) -> np.ndarray:
        return reference_augment(rgb, self.norm, x, y, self.crop, flip, shift, self.scale)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        rgb, label = _decode(sample)
        zero = np.zeros(3)
        if self.train:
            rng = np.random.default_rng([self.seed, sample["__pos__"]])
            x, y = rng.integers(0, self.size - self.crop + 1, size=2)
            flip = bool(rng.integers(0, 2)) and self.mirror
            alpha = rng.normal(0.0, LIGHTING_STD, size=3)
            shift = self.lighting @ alpha if self.lighting is not None else zero
            return torch.from_numpy(self._one(rgb, int(x), int(y), flip, shift)), label
        crops = eval_crops(rgb, self.norm, crop=self.crop, ten_crop=self.ten_crop)
        return torch.from_numpy(crops if self.ten_crop else crops[0]), label


class _EpochSamples(IterableDataset):
    """The epoch's samples of one rank, in order; each worker reads only its own batches, by the
    offsets in the shards' indexes (no tar scan, nothing read twice)."""

    def __init__(self, picks: list[tuple[str, list[Member]]], batch_size: int, augment: Augment):
        self.picks, self.batch_size, self.augment = picks, batch_size, augment

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        b = self.batch_size
        with ExitStack() as files:
            opened: dict[str, BinaryIO] = {}
            for first in range(worker * b, len(self.picks), workers * b):
                for pos in range(first, min(first + b, len(self.picks))):
                    tar, members = self.picks[pos]
                    if tar not in opened:
                        opened[tar] = files.enter_context(open(tar, "rb"))
                    f = opened[tar]
                    sample = {"__url__": tar, "__key__": members[0].name.split(".", 1)[0], "__pos__": pos}
                    for m in members:
                        f.seek(m.offset)
                        sample[m.ext] = f.read(m.size)
                    yield self.augment(sample)


def train_loader(
    urls: list[str],
    sizes: list[int],
    order: list[int],
    augment: Augment,
    *,
    batch_size: int,
    steps: int,
    rank: int,
    world: int,
    workers: int,
    shuffle_buffer: int,
    seed: int,
) -> DataLoader:
    """One training epoch of this rank: `steps` full batches from its part (see the module doc)."""
    _before_fork()
    shards, skip, length = rank_shards(sizes, order, rank, world)
    if steps * batch_size > length:
        raise ValueError(f"rank {rank}'s part has {length} samples, fewer than {steps} x {batch_size}")
    part = [(urls[i], members) for i in shards for members in read_index(layout.idx_path(Path(urls[i])))]
    part = part[skip : skip + length]
    shuffled = wds.filters.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(seed))(
        iter(part)
    )
    picks = list(itertools.islice(shuffled, steps * batch_size))
    return DataLoader(
        _EpochSamples(picks, batch_size, augment),
        batch_size=batch_size,
        num_workers=min(workers, steps),
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def reference_loader(
    urls: list[str],
    augment: Augment,
    *,
    batch_size: int,
    rank: int,
    world: int,
    workers: int,
    persistent: bool = False,
) -> DataLoader:
    """Eval passes over this rank's shards, in stored order (`persistent`: the workers are kept
    between passes; each pass re-reads the same shards in the same order)."""
    _before_fork()
    ds = wds.WebDataset(
        urls,
        shardshuffle=False,
        nodesplitter=functools.partial(_split, rank=rank, world=world),
        workersplitter=wds.split_by_worker,
        empty_check=False,
    )
    ds = ds.map(augment)
    return DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


PIN_THREAD = "Pin memory thread exited unexpectedly"  # torch's, where the batch is read on a CUDA host


def handed_over(batches: Iterator, grace: float = 5.0) -> Iterator:
    """A DataLoader iterator's batches, with a worker that dies while handing one over said as
    torch says a dead worker. A batch's tensors come through a socket of the worker's; killed
    then, the read fails with ConnectionResetError before the worker can be reaped, so torch's
    own check finds every worker alive and lets the socket's error out as if it were a fault.
    (With pin_memory, a CUDA host, that read is in torch's pin-memory thread, which dies of it:
    PIN_THREAD.) Only workers still in service count: one whose share ran out exits cleanly
    while the others go on, and a worker's own EOFError, re-raised here, is the data's."""
    try:
        yield from batches
    except (ConnectionError, EOFError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not str(e).startswith(PIN_THREAD):
            raise
        workers = getattr(batches, "_workers", ())  # torch's, on a multi-process iterator
        serving = getattr(batches, "_workers_status", ())
        end = time.monotonic() + grace  # a killed process's exit takes far less
        while not (
            dead := [w.pid for w, on in zip(workers, serving, strict=True) if on and not w.is_alive()]
        ):
            if time.monotonic() >= end:
                raise
            time.sleep(0.05)
        pids = ", ".join(map(str, dead))
        why = "its pin-memory thread ended" if isinstance(e, RuntimeError) else type(e).__name__
        raise RuntimeError(
            f"{WORKER} (pid(s) {pids}) exited unexpectedly ({why} while it handed over a batch)"
        ) from None
