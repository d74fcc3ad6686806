"""What the trainer iterates: train and eval loaders over a sharded dataset, DALI or reference.

Epoch accounting, the part that silently goes wrong in data-parallel training:

- Train: every rank runs exactly `steps_per_epoch = written // (world * batch)` steps, so DDP
  ranks never wait on each other at an epoch's end. Each epoch permutes the shard list (seeded
  by seed and epoch, the same on every rank: `pipeline.order`), gives rank r the r-th of `world`
  contiguous sample ranges of it, and builds a fresh pipeline seeded by (seed, epoch, rank): the
  ranks' parts are disjoint and cover the split, every epoch has a fresh order, and a resumed
  run replays epoch e exactly (`epoch(e, start_step=k)`). Epoch e + 1 is started while epoch e
  runs (`pipeline.ahead`), so a boundary costs about one batch, not a pipeline build.
- Eval: the readers split the samples into `world` disjoint parts (DALI: contiguous sample
  ranges; reference: whole shards); the DALI reader pads its last batch and the iterator trims
  the padding, so every sample is seen exactly once across all ranks, whatever the batch size.
  The eval pipeline (reference: its workers) is built once and reset after each whole pass
  (the same part in the same order), not rebuilt per pass.

Rank and world come from torch.distributed when it is initialised, else 0 and 1.
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.ahead import Retired, Started, drain
from pipeline.augment import Normalization, lighting_matrix, load_stats
from pipeline.config import LoaderConfig
from pipeline.errors import WORKER, DamagedSampleError, LoaderWorkerError
from pipeline.order import shard_order, shard_sizes
from preprocess.paper import BATCH_SIZE, CROP_SIZE
from shards import layout
from shards.reader import load_dataset, require_images, shard_paths

if TYPE_CHECKING:
    from pipeline.host import MeanWindows

__all__ = ["DamagedSampleError", "EvalLoader", "Feed", "LoaderConfig", "TrainLoader"]


def _one_line(e: BaseException) -> str:
    """The line that says what went wrong: a DamagedSampleError's own message, also when
    DataLoader re-raised it from a worker with the worker's traceback around it; for DALI, the
    line after "encountered:" (its first lines only say "Critical error in pipeline")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "DamagedSampleError: " in ln:
            return ln.split("DamagedSampleError: ", 1)[1]
    if "encountered:" in lines[:-1]:
        return lines[lines.index("encountered:") + 1]
    return lines[0] if lines else type(e).__name__


def _named_errors(it: Iterator, s: _Split) -> Iterator:
    """Re-raise a reading failure as one DamagedSampleError naming the sample, or the split (a
    killed loading worker: LoaderWorkerError, not the data's fault)."""
    kind, message = DamagedSampleError, None  # the error is made as it is raised: held in a
    try:  # local, it would hold this frame (and the reader) in a cycle with its traceback
        yield from it
    except DamagedSampleError as e:
        message = _one_line(e)
        traceback.clear_frames(e.__traceback__)
    except RuntimeError as e:  # DALI: no sample named, only the operator that failed
        if str(e).startswith(WORKER):  # the reference loader's worker killed: not the data
            kind, message = LoaderWorkerError, _one_line(e)
        else:
            message = (
                f"{s.data}/{s.split}: reading the shards failed ({_one_line(e)}); a shard may be "
                f"damaged: run `alexprep verify {s.data}` to find it, then re-shard it"
            )
        traceback.clear_frames(e.__traceback__)
    if message is not None:  # raised outside `except`; the failed reader is let go of now, not
        # in a later fork: the traceback's frames, which hold it, are cleared above, so a
        # DataLoader's workers are shut down as its last reference goes. (Shut down from inside
        # a gc pass, torch 2.13 waits 5 s for each worker, which never gets its stop message.)
        it.close()
        gc.collect()
        raise kind(message)


@dataclass(frozen=True)
class Feed:
    """What one process is fed, besides the loader's settings: its batch, the model's input
    size, the seed, where the batches go, and which part of the data is this rank's."""

    batch_size: int = BATCH_SIZE  # per process: the global batch / the process count
    crop: int = CROP_SIZE
    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda" (DALI: mixed decode and GPU ops)
    rank: int | None = None  # None: from torch.distributed when initialised, else 0 of 1
    world: int | None = None


def rank_world(feed: Feed) -> tuple[int, int]:
    if feed.rank is not None and feed.world is not None:
        return feed.rank, feed.world
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def parse_labels(text: torch.Tensor) -> torch.Tensor:
    """[B, LABEL_BYTES] uint8 ASCII digits padded with NUL -> [B] int64 (on the same device)."""
    text = text.to(torch.int64)
    value = torch.zeros(text.shape[0], dtype=torch.int64, device=text.device)
    for j in range(text.shape[1]):
        digit = text[:, j]
        value = torch.where(digit > 0, value * 10 + (digit - 48), value)
    return value


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)


class _Split:
    """One split of a dataset and the statistics its normalisation needs."""

    def __init__(self, data: Path, split: str, cfg: LoaderConfig, feed: Feed, need_lighting: bool):
        cfg.check()
        if feed.batch_size < 1 or feed.device not in ("cpu", "cuda"):
            raise ValueError(
                f"batch size {feed.batch_size} (must be >= 1), device {feed.device!r} (cpu|cuda)"
            )
        self.data, self.split, self.cfg, self.feed = data, split, cfg, feed
        self.meta = load_dataset(data)
        require_images(data, self.meta, split)  # bench, features: every reader refuses it alike
        self.tars = [str(t) for t in shard_paths(data, split)]
        self.idxs = [str(layout.idx_path(Path(t))) for t in self.tars]
        self.written = self.meta["splits"][split]["written"]
        self.size = self.meta["size"]
        if feed.crop > self.size:
            raise ValueError(f"crop {feed.crop} is larger than the stored images ({self.size})")
        self.rank, self.world = rank_world(feed)
        self.backend = cfg.resolved_backend()
        # both normalisations need it (mean image, or mean/std per channel); training takes this
        # dataset's own, evaluation the model's (copied from its training set, checked by hash)
        stats = load_stats(data, own=need_lighting)
        if cfg.normalization == "mean-image" and stats.mean_image.shape != (self.size, self.size, 3):
            raise ValueError(f"{data}/mean_image.npy is {stats.mean_image.shape}, shards are {self.size}px")
        self.norm = Normalization.of(stats, cfg.normalization)
        self.lighting = (
            lighting_matrix(stats, cfg.lighting).astype(np.float32)
            if need_lighting and cfg.lighting != "off"
            else None
        )
        self.scale = 1.0 / cfg.lighting_scale_div if need_lighting else 1.0  # eval: no colour noise

    def device(self) -> torch.device:
        if self.feed.device == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """To the training device; labels int64."""
        dev = self.device()
        x = x.to(dev, non_blocking=True)
        if y.dtype == torch.uint8:
            y = parse_labels(y)
        return x, y.to(dev, non_blocking=True).to(torch.int64)

    def augment(self, train: bool, ten_crop: bool, seed: int):  # noqa: ANN201
        """The reference loader's per-sample transform with this split's statistics."""
        from pipeline.reference import Augment

        return Augment(
            train=train,
            size=self.size,
            crop=self.feed.crop,
            lighting=self.lighting,
            norm=self.norm,
            scale=self.scale,
            ten_crop=ten_crop,
            seed=seed,
            mirror=self.cfg.mirror,
        )

    def dali_kwargs(self, seed: int) -> dict:
        """The pipeline_def arguments and the graph's common ones."""
        gpu = self.feed.device == "cuda"
        return dict(
            batch_size=self.feed.batch_size,
            num_threads=self.cfg.num_threads,
            device_id=torch.cuda.current_device() if gpu else None,
            seed=seed,
            prefetch_queue_depth=self.cfg.prefetch,
            gpu=gpu,
            cfg=self.cfg,
            norm=self.norm,
            part=(self.rank, self.world),
            crop=self.feed.crop,
        )


def _dali_iter(pipe, policy_name: str):
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from pipeline.dali import READER_NAME

    return DALIGenericIterator(
        pipe,
        ["data", "label"],
        reader_name=READER_NAME,
        last_batch_policy=getattr(LastBatchPolicy, policy_name),
        auto_reset=True,
    )


def _dali_epoch(
    s: _Split,
    seed: int,
    order: list[int],
    steps: int,
    host: MeanWindows | None,
    draws: Callable | None,
    retired: Retired | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of the DALI training graph over the shards in `order` (`host`: the CPU graph's
    mean-image windows, subtracted in torch; None: the graph subtracts the mean itself)."""
    from pipeline.dali import train_pipeline

    pipe = train_pipeline(
        [s.tars[i] for i in order],
        [s.idxs[i] for i in order],
        size=s.size,
        lighting=s.lighting,
        draws=draws,
        mean_on_host=host is not None,
        **s.dali_kwargs(seed),
    )
    pipe.build()
    # steps <= the rank's part: one pass, never wraps
    if host is not None:
        from pipeline.host import host_batches

        yield from host_batches(pipe, steps, host)
        finished = [pipe]
    else:
        it = _dali_iter(pipe, "FILL")
        for _ in range(steps):
            batch = next(it)[0]
            yield batch["data"], batch["label"]
        finished = [it, pipe]
    if retired is not None:  # a teardown holds the GIL for ~10 ms: not here, at the boundary
        retired.add(*finished)


class TrainLoader:
    """`for x, y in loader.epoch(e)`: exactly `steps_per_epoch` augmented batches.

    Once epoch e's first batch is out, epoch e + 1 is started (`pipeline.ahead`), unless `ahead`
    is off (the old way: a build at each epoch's start) or e + 1 == `epochs` (the run's length,
    when known); a different epoch asked for drops it.
    """

    def __init__(
        self,
        data: Path,
        cfg: LoaderConfig,
        feed: Feed,
        split: str = "train",
        draws: Callable | None = None,
        epochs: int | None = None,
        ahead: bool = True,
    ):
        self.s = _Split(data, split, cfg, feed, need_lighting=True)
        self.draws = draws
        self.epochs = epochs
        self._ahead: Started | None = None
        self._retired = Retired() if ahead else None  # finished epochs, for the next start to drop
        self._sizes: list[int] | None = None  # samples per shard (reference backend)
        # CPU graph: the mean image is subtracted in torch (pipeline/host.py); the GPU graph does it
        self.mean_on_host = feed.device == "cpu" and self.s.norm.mean_image is not None
        self._means: MeanWindows | None = None
        self.steps_per_epoch = self.s.written // (self.s.world * feed.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{data}/{split}: {self.s.written} samples is less than one batch of "
                f"{feed.batch_size} on each of {self.s.world} rank(s)"
            )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s batches from step `start_step` on (mid-epoch resume).

        An epoch is a pure function of (seed, epoch, rank, world): resuming at step k yields
        bit-identical tensors to the tail of an uninterrupted epoch, started ahead or not.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} not in 0..{self.steps_per_epoch}")
        for step, (x, y) in enumerate(self._take(epoch)):
            if step >= start_step:  # skipped batches never reach the device
                yield self.s.finish(x, y)
            if step == 0:  # once the first batch is out: the boundary is not kept waiting
                self._start_ahead(epoch + 1)

    def _take(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s batches: the ones started ahead if they are this epoch's, else new."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if ahead.key == epoch:
                return ahead.take()
            ahead.close()
        return self._start(epoch)

    def _start(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch` begun: DataLoader workers forked now; a DALI pipeline built when first asked."""
        s, feed = self.s, self.s.feed
        seed = epoch_seed(feed.seed, epoch, s.rank)
        order = shard_order(len(s.tars), feed.seed, epoch)  # the same on every rank
        steps = self.steps_per_epoch
        if s.backend == "reference":
            return _named_errors(drain(self._reference(seed, order), steps, self._retired), s)
        if self.mean_on_host and self._means is None:
            from pipeline.host import MeanWindows

            self._means = MeanWindows(s.norm.mean_image, feed.crop, s.scale)
        host = self._means if self.mean_on_host else None
        return _named_errors(_dali_epoch(s, seed, order, steps, host, self.draws, self._retired), s)

    def _start_ahead(self, epoch: int) -> None:
        """Begin `epoch` in the background (not with test `draws`: one callback, one pipeline)."""
        if self._retired is None or self.draws is not None:
            return
        if self.epochs is not None and epoch >= self.epochs:
            self._retired.drop()  # the run's last epoch: nothing to build, only a teardown
            return
        retired, start = self._retired, self._start

        def begin() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            retired.drop()  # the finished epoch's teardown, here, off the boundary
            return start(epoch)

        dali = self.s.backend == "dali"
        self._ahead = Started(epoch, begin, background=dali, device=self.s.device())

    def close(self) -> None:
        """Drop the epoch started ahead and finished pipelines (waits for a build to end)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.close()
        if self._retired is not None:
            self._retired.drop()

    def _reference(self, seed: int, order: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's DataLoader iterator: its workers are forked by this call."""
        from pipeline.reference import handed_over, train_loader

        s = self.s
        if self._sizes is None:
            self._sizes = shard_sizes(s.idxs)
        loader = train_loader(
            s.tars,
            self._sizes,
            order,
            s.augment(train=True, ten_crop=False, seed=seed),
            batch_size=s.feed.batch_size,
            steps=self.steps_per_epoch,
            rank=s.rank,
            world=s.world,
            workers=s.cfg.num_threads,
            shuffle_buffer=s.cfg.shuffle_buffer,
            seed=seed,
        )
        return handed_over(iter(loader))


class EvalLoader:
    """Every sample of this rank's part exactly once; x is [B, C, H, W] or [B, 10, C, H, W]."""

    def __init__(
        self,
        data: Path,
        cfg: LoaderConfig,
        feed: Feed,
        split: str = "val",
        ten_crop: bool = False,
        keep: bool = True,
    ):
        self.s = _Split(data, split, cfg.eval(), feed, need_lighting=False)
        self.ten_crop = ten_crop
        self.split = split
        self.keep = keep  # the pipeline (reference: the DataLoader's workers) kept between passes
        self._kept = None  # the DALI iterator or the DataLoader, between whole passes

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in _named_errors(self._batches(), self.s):
            yield self.s.finish(x, y)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.s
        it, self._kept = self._kept, None  # held by this pass; kept again only if it ends whole
        if it is None and s.backend == "reference":
            from pipeline.reference import reference_loader

            it = reference_loader(
                s.tars,
                s.augment(train=False, ten_crop=self.ten_crop, seed=s.feed.seed),
                batch_size=s.feed.batch_size,
                rank=s.rank,
                world=s.world,
                workers=min(s.cfg.num_threads, len(s.tars)),
                persistent=self.keep,  # the same workers for every pass
            )
        if it is None:
            from pipeline.dali import eval_pipeline

            pipe = eval_pipeline(s.tars, s.idxs, ten_crop=self.ten_crop, **s.dali_kwargs(s.feed.seed))
            pipe.build()
            it = _dali_iter(pipe, "PARTIAL")
        if s.backend == "reference":
            from pipeline.reference import handed_over

            yield from handed_over(iter(it))
        else:
            for batch in it:  # one epoch: padding trimmed, then StopIteration (and a reset)
                yield batch[0]["data"], batch[0]["label"]
        if self.keep:  # DALI: reset to the start of this rank's part, prefetching: keep it
            self._kept = it
