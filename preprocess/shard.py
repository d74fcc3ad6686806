"""`alexprep shard`: a source folder -> verified-format WebDataset shards, resumably.

The plan is computed up front (`preprocess.plan`: a pure function of the inputs and arguments,
the train split shuffled globally). Keys are the position in that order, so shard contents
never depend on timing, worker count or which node wrote them.

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

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from preprocess import workers
from preprocess.defaults import DEFAULT_SEED, DEFAULT_SHARD_SIZE
from preprocess.image import IMAGE_SIZE, JPEG_QUALITY, MAX_BYTES, MAX_PIXELS
from preprocess.plan import FLAGS, SplitPlan, check_out, dataset_identity, plan_splits
from preprocess.sources import Source
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
    rebuilt: list[str] = field(default_factory=list)  # merged files found damaged and rebuilt
    changed: list[str] = field(default_factory=list)  # shards redone with other images than before


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
        digests = {}
        for name, t in ((layout.MANIFEST, ok), (layout.REJECTS, bad)):
            data = _parquet_bytes(t)
            layout.write_atomic(out / p.name / name, data)
            digests[MERGED[name]] = hashlib.sha256(data).hexdigest()
        names = [layout.shard_name(p.name, i) for i in range(p.num_shards)]
        counts[p.name] = {
            "found": len(p.items),
            "written": ok.num_rows,
            "rejected": bad.num_rows,
            "shards": p.num_shards,
            "files": {n: records[n] for n in names if records.get(n) is not None},
            **digests,
        }
    return counts


MERGED = {layout.MANIFEST: "manifest_sha256", layout.REJECTS: "rejects_sha256"}


def _merged_problems(out: Path, plans: list[SplitPlan], old: dict | None) -> list[str]:
    """Each split's manifest and rejects that are not what the merge wrote: missing, not a file,
    or (where dataset.json records their SHA-256) other bytes, e.g. damaged or edited. A re-run
    rebuilds them from the parts rather than saying "nothing to do" over a broken manifest."""
    splits = (old or {}).get("splits")
    problems = []
    for p in plans:
        counts = splits.get(p.name) if isinstance(splits, dict) else None
        for name, key in MERGED.items():
            path = out / p.name / name
            why = layout.regular_file_problem(path)
            want = counts.get(key) if isinstance(counts, dict) else None
            if why is None and want is not None:
                try:
                    with open(path, "rb") as f:
                        same = hashlib.file_digest(f, "sha256").hexdigest() == want
                    why = None if same else "not the bytes written: damaged or edited"
                except OSError as e:
                    why = f"unreadable ({e.strerror})"
            if why:
                problems.append(f"{p.name}/{name} ({why})")
    return problems


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
    identity = dataset_identity(source, plans, {k: getattr(opt, k) for k in FLAGS})
    found = {k: len(v) for k, v in source.splits.items()}
    old = check_out(source.root, out, identity, found)
    redo = _check_redo(plans, opt)
    summary = Summary(source.layout, list(source.notes))

    states = {} if old is None else _states(out, plans)
    done = bool(old and old.get("complete"))
    summary.rebuilt = _merged_problems(out, plans, old) if done else []
    if done and not summary.rebuilt and not redo and all(why is None for _, why in states.values()):
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
            # nodes started at one moment on an empty OUT all passed the check above: the first
            # to create dataset.json claims OUT, and the others compare against it like any re-run
            claim = _dataset_json(identity, None)
            if old is None and not layout.create_json(out / layout.DATASET_JSON, claim):
                check_out(source.root, out, identity, found)
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
    before = {(p.name, i): _stored(out, p.name, i) for p, i in todo if states[(p.name, i)][0] is not None}
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
    summary.changed = [line for (n, i), then in before.items() if (line := _changed(out, n, i, then))]
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


def _stored(out: Path, split: str, index: int) -> dict[str, str | None]:
    """source -> SHA-256 of the JPEG a committed shard holds for it (None: rejected)."""
    t = layout.read_parquet(layout.part_path(out, split, index), columns=["source", "sha256"])
    return dict(zip(t["source"].to_pylist(), t["sha256"].to_pylist(), strict=True))


def _changed(out: Path, split: str, index: int, then: dict[str, str | None]) -> str | None:
    """A redone shard that holds other images than before (its sources changed since: a repair
    is byte-identical only from the same files), said with an example; None if the same."""
    now = _stored(out, split, index)
    diff = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    if not diff:
        return None
    name = layout.shard_name(split, index)
    return f"{name}: {len(diff)} of {len(now)} images not as before (e.g. {diff[0]})"


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
