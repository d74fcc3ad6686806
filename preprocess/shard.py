"""`alexprep shard`: a source folder -> verified-format WebDataset shards, resumably.

The plan is computed up front and is a pure function of the inputs and arguments: the train
split is shuffled globally with `seed` (DALI's reader only shuffles inside a buffer, so order on
disk must already be random), other splits keep source order, and each split is cut into
shards of `shard_size` inputs. Keys are the position in that order, so shard contents never
depend on timing, worker count or which node wrote them.

A shard is complete when its manifest part exists (written last, atomically). A re-run skips
complete shards and redoes the rest from scratch; `--num-nodes N --node-rank R` takes shards
R, R+N, R+2N, ... When every shard of every split is complete, the parts are merged into each
split's manifest and rejects, and dataset.json is marked complete.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from preprocess.image import IMAGE_SIZE, JPEG_QUALITY, RejectedImage, process_file
from preprocess.sources import Source
from shards import layout
from shards.writer import MANIFEST_SCHEMA, ShardWriter

# ILSVRC-2012 train: 1,281,167 images / 2,500 = 513 shards of ~70 MB at 256px q90: big enough
# for sequential reads, enough shards to spread over 64 ranks x 8 reader threads.
DEFAULT_SHARD_SIZE = 2500
DEFAULT_SEED = 0


class ShardError(Exception):
    """A user-facing failure (different dataset in OUT, a reject under --strict, ...)."""


@dataclass(frozen=True)
class Options:
    size: int = IMAGE_SIZE
    quality: int = JPEG_QUALITY
    shard_size: int = DEFAULT_SHARD_SIZE
    seed: int = DEFAULT_SEED
    workers: int = 0  # 0: all cores
    num_nodes: int = 1
    node_rank: int = 0
    strict: bool = False
    progress: bool = True


@dataclass
class SplitPlan:
    name: str
    items: list[tuple[str, int]]  # (source path relative to root, label), in shard order
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, index: int) -> list[tuple[str, int]]:
        return self.items[index * self.shard_size : (index + 1) * self.shard_size]


@dataclass
class Summary:
    layout: str
    notes: list[str]
    found: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    shards_done_now: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    images_processed: int = 0
    complete: bool = False
    first_rejects: list[str] = field(default_factory=list)


def plan_splits(source: Source, shard_size: int, seed: int) -> list[SplitPlan]:
    plans = []
    for name in sorted(source.splits):
        items = list(source.splits[name])
        if name == "train":
            order = np.random.default_rng(seed).permutation(len(items))
            items = [items[i] for i in order]
        plans.append(SplitPlan(name, items, shard_size))
    return plans


def _identity(source: Source, plans: list[SplitPlan], opt: Options) -> dict:
    """What makes two runs the same dataset (and nothing that does not: workers, nodes)."""
    digest = hashlib.sha256()
    for p in plans:
        for path, label in p.items:
            digest.update(f"{p.name}\t{path}\t{label}\n".encode())
    return {
        "format_version": layout.FORMAT_VERSION,
        "layout": source.layout,
        "size": opt.size,
        "quality": opt.quality,
        "shard_size": opt.shard_size,
        "seed": opt.seed,
        "num_classes": len(source.classes),
        "plan_sha256": digest.hexdigest(),
    }


def _check_out(out: Path, identity: dict) -> None:
    path = out / layout.DATASET_JSON
    if path.exists():
        old = layout.read_json(path)
        diff = [k for k in identity if old.get(k) != identity[k]]
        if diff:
            raise ShardError(
                f"{out}: holds a different dataset ({', '.join(diff)} differ); "
                "use an empty OUT or the original arguments"
            )
    elif out.exists() and any(out.iterdir()):
        raise ShardError(f"{out}: not empty and has no {layout.DATASET_JSON}; refusing to mix")


@dataclass(frozen=True)
class ShardTask:
    """One shard's work, self-contained so a worker process can do all of it."""

    root: Path
    out: Path
    split: str
    index: int
    items: list[tuple[str, str, int]]  # (key, source path relative to root, label)
    wnids: dict[int, str | None]
    size: int
    quality: int
    strict: bool


@dataclass
class ShardResult:
    rejects: list[str] = field(default_factory=list)


_progress = None  # a shared counter of processed images, set in each worker


def _init_worker(counter) -> None:  # noqa: ANN001 (a multiprocessing.Value)
    global _progress
    _progress = counter
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def write_shard(task: ShardTask) -> ShardResult:
    """Decode, resize and store every input of one shard, then commit it (in a worker).

    Whole shards per worker, rather than images per worker with one writer: the tar writing,
    hashing and manifest stay in the process that made the bytes, so nothing large crosses
    process boundaries and the parent is idle (near-linear scaling with --workers).
    """
    result = ShardResult()
    writer = ShardWriter(task.out, task.split, task.index)
    try:
        for key, path, label in task.items:
            try:
                enc = process_file(str(task.root / path), task.size, task.quality)
            except RejectedImage as e:
                if task.strict:
                    raise ShardError(f"{task.root / path}: {e} (--strict)") from None
                writer.reject(label, path, str(e))
                result.rejects.append(f"{path}: {e}")
            else:
                writer.add(key, label, path, enc.jpeg, enc.width, enc.height, task.wnids[label])
            with _progress.get_lock():
                _progress.value += 1
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return result


def _run(tasks: list[ShardTask], workers: int) -> Iterator[ShardResult | None]:
    """Results as shards finish; one worker runs inline, more use a process pool."""
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    _init_worker(counter)  # the parent reads the same counter for its progress bar
    if workers <= 1:
        for t in tasks:
            yield write_shard(t)
        return
    with ctx.Pool(min(workers, len(tasks)) or 1, initializer=_init_worker, initargs=(counter,)) as pool:
        pending = pool.imap_unordered(write_shard, tasks)
        for _ in tasks:
            while True:
                try:
                    yield pending.next(timeout=0.25)
                    break
                except mp.TimeoutError:
                    yield None  # a tick, so the caller can refresh its progress bar


def _merge(out: Path, plans: list[SplitPlan]) -> dict:
    counts = {}
    for p in plans:
        tables = [pq.read_table(layout.part_path(out, p.name, i)) for i in range(p.num_shards)]
        table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
        ok = table.filter(table["reason"].is_null()).drop_columns(["reason"])
        bad = table.filter(table["reason"].is_valid()).select(["source", "label", "shard", "reason"])
        for name, t in ((layout.MANIFEST, ok), (layout.REJECTS, bad)):
            tmp = layout.tmp_path(out / p.name / name)
            pq.write_table(t, tmp)
            layout.commit(tmp, out / p.name / name)
        counts[p.name] = {
            "found": len(p.items),
            "written": ok.num_rows,
            "rejected": bad.num_rows,
            "shards": p.num_shards,
        }
    return counts


def _dataset_json(identity: dict, counts: dict | None) -> dict:
    return {**identity, "complete": counts is not None, "splits": counts or {}}


def shard(source: Source, out: Path, opt: Options) -> Summary:
    """Write (or finish writing) this node's shards of `source` under `out`."""
    if not 0 <= opt.node_rank < opt.num_nodes:
        raise ShardError(f"--node-rank {opt.node_rank} is not in [0, {opt.num_nodes})")
    plans = plan_splits(source, opt.shard_size, opt.seed)
    identity = _identity(source, plans, opt)
    _check_out(out, identity)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / layout.DATASET_JSON).exists():
        layout.write_json(out / layout.DATASET_JSON, _dataset_json(identity, None))
    layout.write_json(
        out / layout.CLASSES_JSON,
        [{"index": c.index, "name": c.name, "wnid": c.wnid, "label": c.label} for c in source.classes],
    )
    wnids = {c.index: c.wnid for c in source.classes}

    summary = Summary(source.layout, list(source.notes))
    todo: list[tuple[SplitPlan, int]] = []
    for p in plans:
        for i in range(p.num_shards):
            if i % opt.num_nodes != opt.node_rank:
                continue
            if layout.part_path(out, p.name, i).exists():
                summary.shards_skipped += 1
            else:
                todo.append((p, i))

    tasks = [
        ShardTask(
            source.root,
            out,
            p.name,
            i,
            [
                (f"{i * p.shard_size + n:08d}", path, label)
                for n, (path, label) in enumerate(p.shard_items(i))
            ],
            wnids,
            opt.size,
            opt.quality,
            opt.strict,
        )
        for p, i in todo
    ]
    total = sum(len(t.items) for t in tasks)
    workers = opt.workers or os.cpu_count() or 1
    bar = tqdm(
        total=total,
        unit="img",
        disable=not opt.progress,
        smoothing=0.1,
        desc=f"shard x{min(workers, len(tasks)) or 1}",
    )
    start = time.perf_counter()
    try:
        for result in _run(tasks, workers):
            bar.update(_progress.value - bar.n)
            if result is not None:
                summary.shards_done_now += 1
                summary.first_rejects.extend(result.rejects[: 5 - len(summary.first_rejects)])
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.images_processed = total

    summary.complete = all(
        layout.part_path(out, p.name, i).exists() for p in plans for i in range(p.num_shards)
    )
    if summary.complete:
        counts = _merge(out, plans)
        layout.write_json(out / layout.DATASET_JSON, _dataset_json(identity, counts))
    else:  # this node's share only: the others are still running (or not started)
        counts = _count_parts(out, plans, opt)
    for name, c in counts.items():
        summary.found[name] = c["found"]
        summary.written[name], summary.rejected[name] = c["written"], c["rejected"]
    return summary


def _count_parts(out: Path, plans: list[SplitPlan], opt: Options) -> dict:
    counts = {}
    for p in plans:
        mine = [i for i in range(p.num_shards) if i % opt.num_nodes == opt.node_rank]
        reasons = [
            pq.read_table(layout.part_path(out, p.name, i), columns=["reason"])["reason"] for i in mine
        ]
        rejected = sum(len(r) - r.null_count for r in reasons)
        found = sum(len(p.shard_items(i)) for i in mine)
        counts[p.name] = {"found": found, "written": found - rejected, "rejected": rejected}
    return counts
