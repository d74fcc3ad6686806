"""`alexprep shard`: a source folder -> verified-format WebDataset shards, resumably.

The plan is computed up front and is a pure function of the inputs and arguments: the train
split is shuffled globally with `seed` (DALI's reader only shuffles inside a buffer, so order on
disk must already be random), other splits keep source order, and each split is cut into
shards of `shard_size` inputs. Keys are the position in that order, so shard contents never
depend on timing, worker count or which node wrote them.

A shard is complete when its manifest part exists (written last, atomically) and its tar and
index have the sizes the part records. A re-run skips complete shards and redoes the rest from
scratch (`--redo-shard NAME` forces one); `--num-nodes N --node-rank R` takes shards R, R+N,
R+2N, ... When every shard of every split is complete, the parts are merged into each split's
manifest and rejects, and dataset.json is marked complete.

One writer per OUT and node rank (`layout.NodeLock`); every file is published by rename from a
per-process temporary name, and the output is a pure function of the inputs, so writers on
several nodes (or a second run that slipped past the lock with another rank) can only ever
write the same bytes. A run with nothing to do writes nothing (a complete OUT may be read-only).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from preprocess import workers
from preprocess.defaults import DEFAULT_SEED, DEFAULT_SHARD_SIZE
from preprocess.image import IMAGE_SIZE, JPEG_QUALITY, MAX_BYTES, MAX_PIXELS
from preprocess.sources import Source, clean_name
from preprocess.workers import ShardError, ShardTask  # noqa: F401 (ShardError: re-exported)
from shards import layout
from shards.reader import classes_without_samples
from shards.verify import shard_problem
from shards.writer import MANIFEST_SCHEMA, shard_record


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
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    redo_shards: tuple[str, ...] = ()  # shard names (`train-000003`) to rewrite even if complete


@dataclass
class SplitPlan:
    name: str
    # (source path relative to root, label, reason if rejected before reading), in shard order
    items: list[tuple[str, int, str | None]]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, index: int) -> list[tuple[str, int, str | None]]:
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
    wrote_nothing: bool = False  # complete already: no file in OUT was touched
    empty_classes: list[str] = field(default_factory=list)  # no sample written to train on


def plan_splits(source: Source, shard_size: int, seed: int) -> list[SplitPlan]:
    plans = []
    for name in sorted(source.splits):
        reasons = source.reasons.get(name, {})
        items = [(path, label, reasons.get(n)) for n, (path, label) in enumerate(source.splits[name])]
        if name == "train":
            order = np.random.default_rng(seed).permutation(len(items))
            items = [items[i] for i in order]
        plans.append(SplitPlan(name, items, shard_size))
    return plans


def _identity(source: Source, plans: list[SplitPlan], opt: Options) -> dict:
    """What makes two runs the same dataset (and nothing that does not: workers, nodes)."""
    digest = hashlib.sha256()
    for p in plans:
        for path, label, reason in p.items:
            extra = "" if reason is None else f"\t{reason}"
            digest.update(f"{p.name}\t{clean_name(path)}\t{label}{extra}\n".encode())
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


FLAGS = {"size": "--size", "quality": "--quality", "shard_size": "--shard-size", "seed": "--seed"}


def _difference(key: str, old: dict, identity: dict, found: dict[str, int]) -> str | None:
    """One setting of OUT's dataset.json that this run would make otherwise, in the user's
    terms: the flag and both values, or, for the plan (the inputs, their labels and, for train,
    their --seed order), the inputs counted per split; None where a flag already explains it."""
    if key != "plan_sha256":
        return f"{FLAGS.get(key, key)}: OUT {old.get(key)!r}, now {identity[key]!r}"
    if any(old.get(k) != identity[k] for k in ("seed", "layout", "num_classes")):
        return None  # the order or the classes changed: said by that key
    splits = old.get("splits") if isinstance(old.get("splits"), dict) else {}
    before = {k: v.get("found") for k, v in splits.items() if isinstance(v, dict)}
    now = ", ".join(f"{k} {n}" for k, n in sorted(found.items()))
    if not before:  # a run that stopped before its summary: no counts to compare
        return f"SRC's inputs are not those OUT was started from (found now: {now})"
    if before == found:
        return (
            f"SRC's inputs are not those OUT was made from (as many, {now}: renamed, replaced or relabelled)"
        )
    then = ", ".join(f"{k} {n}" for k, n in sorted(before.items()))
    return f"SRC's inputs are not those OUT was made from (found then: {then}; now: {now})"


def _check_out(src: Path, out: Path, identity: dict, found: dict[str, int]) -> dict | None:
    """OUT's existing dataset.json if it is the same dataset; refuse anything else (reads only).
    `found`: the inputs per split now, to say how SRC changed."""
    if out.is_symlink():  # written through, a link would put the dataset somewhere OUT does not say
        target = "a folder" if out.is_dir() else "nothing" if not out.exists() else "a file"
        raise ShardError(
            f"{out}: is a symbolic link (to {target}); pass a real folder's path as OUT "
            f"(e.g. the link's target, {os.path.realpath(out)})"
        )
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a folder")
    if out.resolve() == src.resolve():
        raise ShardError(f"{out}: OUT must not be SRC itself (a subfolder of SRC is fine)")
    path = out / layout.DATASET_JSON
    if path.exists() or path.is_symlink():
        try:
            old = layout.read_json(path)
        except layout.LayoutError as e:
            raise ShardError(f"{e}; OUT is not a dataset this tool wrote: use an empty OUT") from None
        diff = [_difference(k, old, identity, found) for k in identity if old.get(k) != identity[k]]
        diff = [d for d in diff if d]
        if diff:
            raise ShardError(
                f"{out}: holds a different dataset ({'; '.join(diff)}); "
                "use an empty OUT or the original arguments"
            )
        return old
    if out.is_dir():
        try:
            # another node's lock and temporary files may appear before its dataset.json
            entries = [
                e
                for e in os.listdir(out)
                if not (
                    e.startswith(".alexprep-node") or (e.startswith(".") and e.endswith(layout.TMP_SUFFIX))
                )
            ]
        except OSError as e:
            raise ShardError(f"{out}: cannot list ({e.strerror})") from None
        if entries:
            raise ShardError(f"{out}: not empty and has no {layout.DATASET_JSON}; refusing to mix")
    return None


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _merge(out: Path, plans: list[SplitPlan], records: dict[str, dict]) -> dict:
    counts = {}
    for p in plans:
        tables = [
            layout.read_parquet(layout.part_path(out, p.name, i)).replace_schema_metadata(None)
            for i in range(p.num_shards)
        ]
        table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
        ok = table.filter(table["reason"].is_null()).drop_columns(["reason"])
        bad = table.filter(table["reason"].is_valid()).select(["source", "label", "shard", "reason"])
        for name, t in ((layout.MANIFEST, ok), (layout.REJECTS, bad)):
            layout.write_atomic(out / p.name / name, _parquet_bytes(t))
        names = [layout.shard_name(p.name, i) for i in range(p.num_shards)]
        counts[p.name] = {
            "found": len(p.items),
            "written": ok.num_rows,
            "rejected": bad.num_rows,
            "shards": p.num_shards,
            "files": {n: records[n] for n in names if records.get(n) is not None},
        }
    return counts


def _shard_state(out: Path, split: str, index: int) -> tuple[dict | None, str | None]:
    """(the part's record, why the shard is not complete); (None, "no part") if not committed.

    A part whose tar or index does not have the recorded size (truncated, replaced by a link,
    half-written by a foreign process) makes the shard incomplete, to be redone.
    """
    part = layout.part_path(out, split, index)
    if layout.regular_file_problem(part):
        return None, "no part"
    try:
        record = shard_record(part)
    except Exception as e:  # noqa: BLE001 - a garbage part is an incomplete shard
        return None, f"unreadable part ({type(e).__name__})"
    return record, shard_problem(layout.tar_path(out, split, index), record)


def _dataset_json(identity: dict, counts: dict | None) -> dict:
    return {**identity, "complete": counts is not None, "splits": counts or {}}


def _check_redo(plans: list[SplitPlan], opt: Options) -> set[tuple[str, int]]:
    names = {layout.shard_name(p.name, i): (p.name, i) for p in plans for i in range(p.num_shards)}
    redo = set()
    for n in opt.redo_shards:
        if n.endswith((".tar", ".idx", ".parquet")):
            n = n.rsplit(".", 1)[0]
        if n not in names:
            raise ShardError(
                f"--redo-shard {n}: no such shard in this dataset (e.g. {next(iter(names), '-')})"
            )
        if names[n][1] % opt.num_nodes != opt.node_rank:
            raise ShardError(f"--redo-shard {n}: belongs to node rank {names[n][1] % opt.num_nodes}")
        redo.add(names[n])
    return redo


def _classes_json(source: Source) -> list[dict]:
    return [{"index": c.index, "name": c.name, "wnid": c.wnid, "label": c.label} for c in source.classes]


def shard(source: Source, out: Path, opt: Options) -> Summary:
    """Write (or finish writing) this node's shards of `source` under `out`."""
    if not 0 <= opt.node_rank < opt.num_nodes:
        raise ShardError(f"--node-rank {opt.node_rank} is not in [0, {opt.num_nodes})")
    plans = plan_splits(source, opt.shard_size, opt.seed)
    identity = _identity(source, plans, opt)
    old = _check_out(source.root, out, identity, {k: len(v) for k, v in source.splits.items()})
    redo = _check_redo(plans, opt)
    summary = Summary(source.layout, list(source.notes))

    states = {} if old is None else _states(out, plans)
    merged = all(
        layout.regular_file_problem(out / p.name / f) is None
        for p in plans
        for f in (layout.MANIFEST, layout.REJECTS)
    )
    if old and old.get("complete") and merged and not redo and all(why is None for _, why in states.values()):
        try:
            same_classes = layout.read_json_list(out / layout.CLASSES_JSON) == _classes_json(source)
        except layout.LayoutError:
            same_classes = False
        if same_classes:  # nothing to do, nothing written (OUT may be read-only)
            summary.complete = summary.wrote_nothing = True
            summary.shards_skipped = sum(
                i % opt.num_nodes == opt.node_rank for p in plans for i in range(p.num_shards)
            )
            _fill_counts(summary, old["splits"])
            return summary

    try:
        layout.ensure_dir(out)
        with layout.NodeLock(out, opt.node_rank):
            return _shard_locked(source, out, opt, plans, identity, redo, summary)
    except layout.LayoutError as e:
        raise ShardError(str(e)) from None


def _states(out: Path, plans: list[SplitPlan]) -> dict[tuple[str, int], tuple[dict | None, str | None]]:
    return {(p.name, i): _shard_state(out, p.name, i) for p in plans for i in range(p.num_shards)}


def _fill_counts(summary: Summary, counts: dict) -> None:
    for name, c in counts.items():
        summary.found[name] = c["found"]
        summary.written[name], summary.rejected[name] = c["written"], c["rejected"]


def _shard_locked(
    source: Source,
    out: Path,
    opt: Options,
    plans: list[SplitPlan],
    identity: dict,
    redo: set[tuple[str, int]],
    summary: Summary,
) -> Summary:
    """The writing half of `shard`, under this node's lock."""
    states = _states(out, plans)
    mine = [(p, i) for p in plans for i in range(p.num_shards) if i % opt.num_nodes == opt.node_rank]
    todo = [(p, i) for p, i in mine if (p.name, i) in redo or states[(p.name, i)][1] is not None]
    if todo or not (out / layout.DATASET_JSON).exists():
        # incomplete until every shard is back: a reader never trusts a dataset being repaired
        layout.write_json_if_changed(out / layout.DATASET_JSON, _dataset_json(identity, None))
    layout.write_json_if_changed(out / layout.CLASSES_JSON, _classes_json(source))
    layout.remove_stale_tmp(out)
    for p in plans:  # real folders (a link here is refused, not followed), then clean them
        for folder in (out / p.name, out / p.name / layout.PARTS):
            layout.ensure_dir(folder)
            layout.remove_stale_tmp(folder)
    for p, i in todo:  # the part is the commit marker: remove it first, then redo the shard
        layout.part_path(out, p.name, i).unlink(missing_ok=True)
    wnids = {c.index: c.wnid for c in source.classes}
    summary.shards_skipped = len(mine) - len(todo)

    tasks = [
        ShardTask(
            source.root,
            out,
            p.name,
            i,
            [
                (f"{i * p.shard_size + n:08d}", path, label, reason)
                for n, (path, label, reason) in enumerate(p.shard_items(i))
            ],
            wnids,
            opt.size,
            opt.quality,
            opt.strict,
            opt.max_pixels,
            opt.max_bytes,
        )
        for p, i in todo
    ]
    total = sum(len(t.items) for t in tasks)
    n_workers = opt.workers or os.cpu_count() or 1
    bar = tqdm(
        total=total,
        unit="img",
        disable=not opt.progress,
        smoothing=0.1,
        desc=f"shard x{min(n_workers, len(tasks)) or 1}",
    )
    start = time.perf_counter()
    try:
        for result in workers.run(tasks, n_workers):
            bar.update(workers.progress.value - bar.n)
            if result is not None:
                summary.shards_done_now += 1
                summary.first_rejects.extend(result.rejects[: 5 - len(summary.first_rejects)])
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.images_processed = total

    states = _states(out, plans)
    bad = [
        f"{layout.shard_name(n, i)}: {why}"
        for (n, i), (_, why) in states.items()
        if why not in (None, "no part")
    ]
    if bad:  # written by us moments ago and already wrong: something else is writing OUT
        raise ShardError(
            f"{out}: shard(s) changed while writing ({'; '.join(bad[:3])}); is another writer active?"
        )
    summary.complete = all(why is None for _, why in states.values())
    if summary.complete:
        records = {layout.shard_name(n, i): rec for (n, i), (rec, _) in states.items()}
        counts = _merge(out, plans, records)
        layout.write_json_if_changed(out / layout.DATASET_JSON, _dataset_json(identity, counts))
        names = [p.name for p in plans]
        learn = "train" if "train" in names else names[0] if len(names) == 1 else None
        if learn is not None:  # every image of a class rejected: said loudly, refused by `run`
            summary.empty_classes = classes_without_samples(out, learn, _classes_json(source))
    else:  # this node's share only: the others are still running (or not started)
        counts = _count_parts(out, plans, opt)
    _fill_counts(summary, counts)
    return summary


def _count_parts(out: Path, plans: list[SplitPlan], opt: Options) -> dict:
    counts = {}
    for p in plans:
        mine = [i for i in range(p.num_shards) if i % opt.num_nodes == opt.node_rank]
        reasons = [
            layout.read_parquet(layout.part_path(out, p.name, i), columns=["reason"])["reason"] for i in mine
        ]
        rejected = sum(len(r) - r.null_count for r in reasons)
        found = sum(len(p.shard_items(i)) for i in mine)
        counts[p.name] = {"found": found, "written": found - rejected, "rejected": rejected}
    return counts
