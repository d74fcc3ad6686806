"""The reference loader: the same semantics in plain PyTorch (webdataset + DataLoader + OpenCV).

Three jobs: the oracle the DALI tests compare against, the fallback where DALI is not
installed, and the baseline of `bench/loader_throughput.py`. Each sample goes through
`augment.reference_augment`, the numpy statement of the paper's augmentation.

Splitting. Eval: shards are dealt to ranks (`urls[rank::world]`) and then to DataLoader
workers, so an eval epoch sees every sample exactly once across all ranks and workers. Train: as
DALI does, each rank reads a contiguous sample range of the epoch's permuted shard list
(`pipeline.order`), shuffles it in a buffer, and takes the epoch's `steps * batch` samples; every
worker reads that same stream and keeps its own batches (batch k to worker k % W, the order in
which DataLoader collects them), so the batches do not depend on the number of workers. Each
sample's random draws are seeded by (seed, position in the stream) for the same reason.
"""

from __future__ import annotations

import functools
import random

import cv2
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from pipeline.augment import LIGHTING_STD, eval_crops, reference_augment
from pipeline.order import rank_shards


def _split(urls, rank: int, world: int):
    return list(urls)[rank::world]


def _before_fork() -> None:
    """One OpenCV thread, set in the parent: the workers are the parallelism, and a worker that
    resizes OpenCV's thread pool inherited across fork deadlocks (in pthread_cond_destroy)."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def _all(urls):
    return list(urls)


def _worker_batches(batch_size: int):
    """Keep this worker's batches of the stream (k % W == worker), each sample with its position."""

    def take(samples):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for pos, sample in enumerate(samples):
            if (pos // batch_size) % workers == worker:
                sample["__pos__"] = pos
                yield sample

    return take


def _decode(sample: dict) -> tuple[np.ndarray, int]:
    """RGB pixels and label of a stored sample; DamagedSampleError naming shard and key if not."""
    from pipeline.loader import DamagedSampleError

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
        mean_image: np.ndarray | None,
        channel_mean: np.ndarray | None,
        channel_std: np.ndarray | None,
        ten_crop: bool,
        scale: float = 1.0,
        seed: int,
        mirror: bool = True,
    ):
        self.mirror = mirror
        self.train, self.size, self.crop, self.ten_crop, self.seed = train, size, crop, ten_crop, seed
        self.lighting, self.mean_image = lighting, mean_image
        self.channel_mean, self.channel_std = channel_mean, channel_std
        self.scale = scale

    def _one(self, rgb: np.ndarray, x: int, y: int, flip: bool, shift: np.ndarray) -> np.ndarray:
        return reference_augment(
            rgb,
            self.mean_image,
            self.channel_mean,
            self.channel_std,
            x,
            y,
            self.crop,
            flip,
            shift,
            self.scale,
        )

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
        crops = eval_crops(
            rgb,
            mean_image=self.mean_image,
            channel_mean=self.channel_mean,
            channel_std=self.channel_std,
            crop=self.crop,
            ten_crop=self.ten_crop,
        )
        return torch.from_numpy(crops if self.ten_crop else crops[0]), label


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
    ds = (
        wds.WebDataset(
            [urls[i] for i in shards],
            shardshuffle=False,
            nodesplitter=_all,
            workersplitter=_all,
            empty_check=False,
        )
        .slice(skip, skip + length)
        .shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(seed))
        .slice(steps * batch_size)
        .compose(_worker_batches(batch_size))
        .map(augment)
    )
    return DataLoader(
        ds,
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
) -> DataLoader:
    """One eval pass over this rank's shards, in stored order."""
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
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
