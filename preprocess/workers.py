"""The shard workers: one process writes whole shards (decode, resize, JPEG, tar, index,
manifest part), so nothing large crosses process boundaries and the parent only counts.

`run` yields results as shards finish; one worker runs inline, more use `shards.pool`'s forked
pool: its workers die with their parent (a killed `alexprep shard` leaves no writer behind) and
stop at the next image when the run ends early (Ctrl-C, a reject under --strict).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from preprocess.image import RejectedImage, process_file
from preprocess.walk import clean_name
from shards import layout
from shards.pool import check_stop, fork_pool
from shards.writer import ShardWriter


class ShardError(Exception):
    """A user-facing failure (different dataset in OUT, a reject under --strict, ...)."""


@dataclass(frozen=True)
class ShardTask:
    """One shard's work, self-contained so a worker process can do all of it."""

    root: Path
    out: Path
    split: str
    index: int
    items: list[tuple[str, str, int, str | None]]  # (key, source path relative to root, label, reason)
    wnids: dict[int, str | None]
    size: int
    quality: int
    strict: bool
    max_pixels: int
    max_bytes: int


@dataclass
class ShardResult:
    rejects: list[str] = field(default_factory=list)


progress = None  # a shared counter of processed images, set in each worker


def _init_worker(counter) -> None:  # noqa: ANN001 (a multiprocessing.Value)
    global progress
    progress = counter
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def write_shard(task: ShardTask) -> ShardResult:
    """Decode, resize and store every input of one shard, then commit it (in a worker).

    Whole shards per worker, rather than images per worker with one writer: the tar writing,
    hashing and manifest stay in the process that made the bytes, so nothing large crosses
    process boundaries and the parent is idle (near-linear scaling with --workers).
    """
    with layout.writing(layout.tar_path(task.out, task.split, task.index)):  # disk full: one line
        return _write_shard(task)


def _write_shard(task: ShardTask) -> ShardResult:
    result = ShardResult()
    writer = ShardWriter(task.out, task.split, task.index)
    try:
        for key, path, label, reason in task.items:
            check_stop()
            name = clean_name(path)
            try:
                if reason is not None:
                    raise RejectedImage(reason)
                enc = process_file(
                    os.path.join(task.root, path), task.size, task.quality, task.max_pixels, task.max_bytes
                )
            except RejectedImage as e:
                if task.strict:
                    raise ShardError(f"{clean_name(str(task.root / path))}: {e} (--strict)") from None
                writer.reject(label if label >= 0 else None, name, str(e))
                result.rejects.append(f"{name}: {e}")
            else:
                writer.add(key, label, name, enc.jpeg, enc.width, enc.height, task.wnids[label])
            with progress.get_lock():
                progress.value += 1
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return result


def run(tasks: list[ShardTask], workers: int) -> Iterator[ShardResult | None]:
    """Results as shards finish; one worker runs inline, more use a process pool."""
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    _init_worker(counter)  # the parent reads the same counter for its progress bar
    if workers <= 1:
        for t in tasks:
            yield write_shard(t)
        return
    with fork_pool(min(workers, len(tasks)) or 1, _init_worker, (counter,)) as pool:
        pending = {pool.submit(write_shard, t) for t in tasks}
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for shard in done:
                yield shard.result()  # a worker's error (ShardError under --strict) is raised here
            if not done:
                yield None  # a tick, so the caller can refresh its progress bar
