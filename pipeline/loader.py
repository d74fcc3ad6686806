"""What the trainer iterates: train and eval loaders over a sharded dataset, DALI or reference.

Epoch accounting, the part that silently goes wrong in data-parallel training:

- Train: every rank runs exactly `steps_per_epoch = written // (world * batch)` steps, so DDP
  ranks never wait on each other at an epoch's end. Each epoch permutes the shard list (seeded
  by seed and epoch, the same on every rank: `pipeline.order`), gives rank r the r-th of `world`
  contiguous sample ranges of it, and builds a fresh pipeline seeded by (seed, epoch, rank): the
  ranks' parts are disjoint and cover the split, every epoch has a fresh order, and a resumed
  run replays epoch e exactly (`epoch(e, start_step=k)`).
- Eval: the readers split the samples into `world` disjoint parts (DALI: contiguous sample
  ranges; reference: whole shards); the DALI reader pads its last batch and the iterator trims
  the padding, so every sample is seen exactly once across all ranks, whatever the batch size.

Rank and world come from torch.distributed when it is initialised, else 0 and 1.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.augment import (
    CROP_SIZE,
    LIGHTING_CONVENTIONS,
    NORMALIZATIONS,
    lighting_matrix,
    load_stats,
)
from pipeline.order import shard_order, shard_sizes
from shards import layout
from shards.reader import load_dataset, shard_paths


class DamagedSampleError(ValueError):
    """A stored sample that cannot be read or decoded; the message names the shard and key.

    (DALI can also die on such a sample with a signal: `shards.verify.preflight`, run before
    training, is what keeps damaged shards away from it.)"""


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
    """Re-raise a reading failure as one DamagedSampleError naming the sample, or the split."""
    message = None
    try:
        yield from it
    except DamagedSampleError as e:
        message = _one_line(e)
    except RuntimeError as e:  # DALI: no sample named, only the operator that failed
        message = (
            f"{s.data}/{s.split}: reading the shards failed ({_one_line(e)}); a shard may be "
            f"damaged: run `alexprep verify {s.data}` to find it, then re-shard it"
        )
    if message is not None:  # raised outside `except`, and the failed reader's reference cycles
        it.close()  # collected now: its DataLoader workers are shut down here, not in a later fork
        gc.collect()
        raise DamagedSampleError(message)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int = 128  # section 5
    device: str = "cpu"  # "cpu" or "cuda" (DALI: mixed decode and GPU ops)
    backend: str = "dali"  # "dali" or "reference"
    num_threads: int = 4  # DALI CPU threads (reference: DataLoader workers)
    prefetch: int = 2  # DALI prefetch queue depth
    hw_decoder_load: float = 0.65  # share of JPEGs for the hardware decoder (A100/H100)
    seed: int = 0
    lighting: str = "cuda-convnet"
    mirror: bool = True  # random horizontal reflection in training (section 4.1); off: Figure 1
    # cuda-convnet divides the training image by 1 + 0.1 after adding colour noise, so that its
    # scale matches the test images'; 1.0 (the paper, which does not mention it) or 1.1
    lighting_scale_div: float = 1.0
    normalization: str = "mean-image"  # or "channel": per-channel mean/std
    dtype: str = "float32"
    crop: int = CROP_SIZE
    shuffle_buffer: int = 4096  # DALI initial_fill / webdataset shuffle buffer
    mmap: bool = True  # DALI: memory-map the shards (False: plain reads; see pipeline/dali.py)
    rank: int | None = None
    world: int | None = None

    def validate(self) -> None:
        checks = [
            (self.backend in ("dali", "reference"), f"backend {self.backend!r} not dali|reference"),
            (self.device in ("cpu", "cuda"), f"device {self.device!r} not cpu|cuda"),
            (
                self.lighting in LIGHTING_CONVENTIONS,
                f"lighting {self.lighting!r} not in {LIGHTING_CONVENTIONS}",
            ),
            (
                self.normalization in NORMALIZATIONS,
                f"normalization {self.normalization!r} not in {NORMALIZATIONS}",
            ),
            (self.dtype in DTYPES, f"dtype {self.dtype!r} not in {tuple(DTYPES)}"),
            (self.batch_size >= 1, "batch size must be >= 1"),
            (
                self.lighting_scale_div == 1.0 or (self.lighting_scale_div > 0 and self.lighting != "off"),
                f"lighting_scale_div {self.lighting_scale_div} needs lighting noise and must be > 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def rank_world(opt: LoaderOptions) -> tuple[int, int]:
    if opt.rank is not None and opt.world is not None:
        return opt.rank, opt.world
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

    def __init__(self, data: Path, split: str, opt: LoaderOptions, need_lighting: bool):
        opt.validate()
        self.data, self.split = data, split
        self.meta = load_dataset(data)
        self.tars = [str(t) for t in shard_paths(data, split)]
        self.idxs = [str(layout.idx_path(Path(t))) for t in self.tars]
        self.written = self.meta["splits"][split]["written"]
        self.size = self.meta["size"]
        if opt.crop > self.size:
            raise ValueError(f"crop {opt.crop} is larger than the stored images ({self.size})")
        self.opt = opt
        self.rank, self.world = rank_world(opt)
        stats = load_stats(data)  # both normalisations need it (mean image, or mean/std per channel)
        if opt.normalization == "mean-image" and stats.mean_image.shape != (self.size, self.size, 3):
            raise ValueError(f"{data}/mean_image.npy is {stats.mean_image.shape}, shards are {self.size}px")
        self.mean_image = stats.mean_image if opt.normalization == "mean-image" else None
        self.channel_mean = stats.mean_rgb if opt.normalization == "channel" else None
        self.channel_std = stats.std_rgb if opt.normalization == "channel" else None
        self.lighting = (
            lighting_matrix(stats, opt.lighting).astype(np.float32)
            if need_lighting and opt.lighting != "off"
            else None
        )
        self.scale = 1.0 / opt.lighting_scale_div  # train only: eval never has lighting noise

    def device(self) -> torch.device:
        if self.opt.device == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """To the training device, in the asked dtype; labels int64."""
        dev = self.device()
        x = x.to(dev, non_blocking=True)
        if x.dtype != DTYPES[self.opt.dtype]:
            x = x.to(DTYPES[self.opt.dtype])
        if y.dtype == torch.uint8:
            y = parse_labels(y)
        return x, y.to(dev, non_blocking=True).to(torch.int64)

    def augment(self, train: bool, ten_crop: bool, seed: int):  # noqa: ANN201
        """The reference loader's per-sample transform with this split's statistics."""
        from pipeline.reference import Augment

        return Augment(
            train=train,
            size=self.size,
            crop=self.opt.crop,
            lighting=self.lighting,
            mean_image=self.mean_image,
            channel_mean=self.channel_mean,
            channel_std=self.channel_std,
            scale=self.scale,
            ten_crop=ten_crop,
            seed=seed,
            mirror=self.opt.mirror,
        )

    def dali_kwargs(self, seed: int) -> dict:
        gpu = self.opt.device == "cuda"
        return dict(
            batch_size=self.opt.batch_size,
            num_threads=self.opt.num_threads,
            device_id=torch.cuda.current_device() if gpu else None,
            seed=seed,
            prefetch_queue_depth=self.opt.prefetch,
            gpu=gpu,
            hw_decoder_load=self.opt.hw_decoder_load,
            mmap=self.opt.mmap,
            mean_image=self.mean_image,
            channel_mean=self.channel_mean,
            channel_std=self.channel_std,
            dtype="float16" if self.opt.dtype == "float16" else "float32",
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


class TrainLoader:
    """`for x, y in loader.epoch(e)`: exactly `steps_per_epoch` augmented batches."""

    def __init__(self, data: Path, opt: LoaderOptions, split: str = "train", draws: Callable | None = None):
        self.s = _Split(data, split, opt, need_lighting=True)
        self.draws = draws
        self._sizes: list[int] | None = None  # samples per shard (reference backend)
        # CPU graph: the mean image is subtracted in torch (pipeline/host.py); the GPU graph does it
        self.mean_on_host = opt.device == "cpu" and self.s.mean_image is not None
        self._means = None
        self.steps_per_epoch = self.s.written // (self.s.world * opt.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{data}/{split}: {self.s.written} samples is less than one batch of "
                f"{opt.batch_size} on each of {self.s.world} rank(s)"
            )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch `epoch`'s batches from step `start_step` on (mid-epoch resume).

        An epoch is a pure function of (seed, epoch, rank, world): resuming at step k yields
        bit-identical tensors to the tail of an uninterrupted epoch.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} not in 0..{self.steps_per_epoch}")
        for step, (x, y) in enumerate(_named_errors(self._epoch(epoch), self.s)):
            if step >= start_step:  # skipped batches never reach the device
                yield self.s.finish(x, y)

    def _epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s, opt = self.s, self.s.opt
        seed = epoch_seed(opt.seed, epoch, s.rank)
        order = shard_order(len(s.tars), opt.seed, epoch)  # the same on every rank
        if self.mean_on_host and self._means is None:
            from pipeline.host import MeanWindows

            self._means = MeanWindows(s.mean_image, opt.crop, s.scale)
        if opt.backend == "reference":
            yield from self._reference(seed, order)
            return
        from pipeline.dali import train_pipeline

        pipe = train_pipeline(
            [s.tars[i] for i in order],
            [s.idxs[i] for i in order],
            shard_id=s.rank,
            num_shards=s.world,
            size=s.size,
            crop=opt.crop,
            lighting=s.lighting,
            scale=s.scale,
            initial_fill=opt.shuffle_buffer,
            draws=self.draws,
            mirror=opt.mirror,
            mean_on_host=self.mean_on_host,
            **s.dali_kwargs(seed),
        )
        pipe.build()
        # steps_per_epoch <= the rank's part: one pass, never wraps
        if self.mean_on_host:
            from pipeline.host import host_batches

            yield from host_batches(pipe, self.steps_per_epoch, self._means)
        else:
            it = _dali_iter(pipe, "FILL")
            for _ in range(self.steps_per_epoch):
                batch = next(it)[0]
                yield batch["data"], batch["label"]
            del it
        del pipe

    def _reference(self, seed: int, order: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from pipeline.reference import train_loader

        s, opt = self.s, self.s.opt
        if self._sizes is None:
            self._sizes = shard_sizes(s.idxs)
        yield from train_loader(
            s.tars,
            self._sizes,
            order,
            s.augment(train=True, ten_crop=False, seed=seed),
            batch_size=opt.batch_size,
            steps=self.steps_per_epoch,
            rank=s.rank,
            world=s.world,
            workers=opt.num_threads,
            shuffle_buffer=opt.shuffle_buffer,
            seed=seed,
        )


class EvalLoader:
    """Every sample of this rank's part exactly once; x is [B, C, H, W] or [B, 10, C, H, W]."""

    def __init__(self, data: Path, opt: LoaderOptions, split: str = "val", ten_crop: bool = False):
        self.s = _Split(
            data, split, replace(opt, lighting="off", lighting_scale_div=1.0), need_lighting=False
        )
        self.ten_crop = ten_crop
        self.split = split

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in _named_errors(self._batches(), self.s):
            yield self.s.finish(x, y)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s, opt = self.s, self.s.opt
        if opt.backend == "reference":
            from pipeline.reference import reference_loader

            aug = s.augment(train=False, ten_crop=self.ten_crop, seed=opt.seed)
            yield from reference_loader(
                s.tars,
                aug,
                batch_size=opt.batch_size,
                rank=s.rank,
                world=s.world,
                workers=min(opt.num_threads, len(s.tars)),
            )
            return
        from pipeline.dali import eval_pipeline

        pipe = eval_pipeline(
            s.tars,
            s.idxs,
            shard_id=s.rank,
            num_shards=s.world,
            crop=opt.crop,
            ten_crop=self.ten_crop,
            **s.dali_kwargs(opt.seed),
        )
        pipe.build()
        for batch in _dali_iter(pipe, "PARTIAL"):  # one epoch: padding trimmed, then StopIteration
            yield batch[0]["data"], batch[0]["label"]
