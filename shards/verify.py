"""`alexprep verify` and the trainer's `preflight`: are the shards what was written?

`verify` is independent of the writer on purpose: offsets are re-derived by parsing the tar with
`tarfile`, JPEGs are decoded, every member (`.jpg`, `.cls`, `.json`) is compared with what the
manifest says it must be, and the whole tar and index with the SHA-256 recorded at write time.
One flipped byte anywhere shows up by shard and sample. On success it records the shards'
sizes and mtimes in OUT/verified.json.

`preflight` is what a training run calls before it starts: a structural check that reads no
tar (every tar and index present, a regular file, of the recorded size, the index's sample count
as recorded: well under a second for ImageNet's 533 shards), then the full hash pass only when
asked or when verified.json does not vouch for the current files.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from shards import layout
from shards.index import INDEX_VERSION, read_index
from shards.pool import check_stop, fork_pool
from shards.reader import RESTORE_CLASSES, DamagedDataError, DatasetError, load_classes, load_dataset
from shards.writer import sample_json

__all__ = ["DamagedDataError", "check_shard", "check_structure", "preflight", "shard_problem", "verify"]

_HASH_CHUNK = 8 * 2**20


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _idx_count(idx: Path) -> int | None:
    """The sample count in an index's header line (reads one line)."""
    try:
        with open(idx, "rb") as f:
            head = f.readline(64).split()
        return int(head[1]) if len(head) == 2 and head[0] == INDEX_VERSION.encode() else None
    except (OSError, ValueError):
        return None


def shard_problem(tar: Path, record: dict | None) -> str | None:
    """The structural problem of one shard (no tar read), or None.

    `record` is what the writer recorded (`shards.writer.shard_record`); without one (a dataset
    from an older alexprep) only presence and file types are checked.
    """
    idx = layout.idx_path(tar)
    for path in (tar, idx):
        why = layout.regular_file_problem(path)
        if why:
            return f"{path.name}: {why}"
    _readable(tar)
    if record is None:
        return None
    for path, key in ((tar, "tar_bytes"), (idx, "idx_bytes")):
        size = path.stat().st_size
        if size != record[key]:
            return f"{path.name}: {size:,} bytes, {record[key]:,} were written (truncated or damaged)"
    count = _idx_count(idx)
    if count != record["samples"]:
        return f"{idx.name}: index lists {count} samples, {record['samples']} were written"
    return None


def _readable(tar: Path) -> None:
    """A shard this user cannot read is a permissions problem, not damage: said as such (one
    DatasetError), never as "truncated", "index lists None samples" or "re-shard it"."""
    for path in (tar, layout.idx_path(tar)):
        why = layout.unreadable(path)
        if why:
            raise DatasetError(why)


def shard_hash_problem(tar: Path, record: dict) -> str | None:
    """Full check: the tar's and index's SHA-256 against the record (reads both files)."""
    for path, key in ((tar, "tar_sha256"), (layout.idx_path(tar), "idx_sha256")):
        if file_sha256(path) != record[key]:
            return f"{path.name}: SHA-256 differs from the one recorded when it was written"
    return None


def _records(meta: dict, split: str) -> dict[str, dict]:
    return meta["splits"][split].get("files") or {}


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _stamps(out: Path, meta: dict, splits: Sequence[str]) -> dict[str, list[int]]:
    stamps = {}
    for split in splits:
        for i in range(meta["splits"][split]["shards"]):
            tar = layout.tar_path(out, split, i)
            for p in (tar, layout.idx_path(tar)):
                stamps[str(p.relative_to(out))] = _stamp(p)
    return stamps


def _verified(out: Path, meta: dict, splits: Sequence[str], record_path: Path | None = None) -> bool:
    """Does verified.json (or `record_path`) vouch for the current bytes (same plan; sizes and
    mtimes unchanged)?"""
    try:
        record = layout.read_json(record_path or out / layout.VERIFIED_JSON)
        if record.get("plan_sha256") != meta.get("plan_sha256"):
            return False
        stamps = record.get("files", {})
        return all(stamps.get(k) == v for k, v in _stamps(out, meta, splits).items())
    except (layout.LayoutError, OSError, AttributeError):
        return False


MAX_SHOWN = 5  # problems named in a DamagedDataError's one line


def _damaged(
    data: Path, problems: list[str], bad: list[Path], structure_only: bool = False
) -> DamagedDataError:
    """`structure_only`: found by sizes and index headers alone, before any shard was read, so
    the others' contents are unknown: verify reads them all before the repair, not after it."""
    redo = " ".join(f"--redo-shard {t.stem}" for t in bad)
    first = (
        f"run `alexprep verify {data}` to find every damaged shard (the others' contents "
        "were not read yet), then "
        if structure_only
        else ""
    )
    shown = "; ".join(problems[:MAX_SHOWN])
    if len(problems) > MAX_SHOWN:  # one line a terminal can show: `alexprep verify` lists them all
        shown += f"; and {len(problems) - MAX_SHOWN} more (`alexprep verify {data}` lists every one)"
    return DamagedDataError(
        f"{data}: {len(bad)} damaged shard(s): {shown}. "
        f"Repair: {first}re-run `alexprep shard SRC {data} ... {redo}` with the original arguments "
        "(byte-identical), then `alexprep verify`"
    )


def _checked(data: Path, splits: Sequence[str]) -> dict:
    meta = load_dataset(data)
    for split in splits:
        if split not in meta["splits"]:
            raise DatasetError(f"{data}: no {split} split (have: {', '.join(sorted(meta['splits']))})")
    return meta


def check_structure(data: Path, splits: Sequence[str]) -> None:
    """The fast half of `preflight`: stat and index headers only, no tar is read."""
    meta = _checked(data, splits)
    problems, bad = [], []
    for split in splits:
        records = _records(meta, split)
        for i in range(meta["splits"][split]["shards"]):
            tar = layout.tar_path(data, split, i)
            why = shard_problem(tar, records.get(tar.stem))
            if why:
                problems.append(why)
                bad.append(tar)
    if problems:  # said at once, before any hashing: what else is damaged, only verify can say
        raise _damaged(data, problems, bad, structure_only=True)


def preflight(
    data: Path,
    splits: Sequence[str],
    full: bool = False,
    hash_files: bool = True,
    say: Callable[[str], None] | None = None,
    keep: Path | None = None,
    progress: bool = False,
) -> None:
    """Check the shards of `splits` under `data` before training on them.

    Always: the structural check (fast, stat + index header). Then, with `full=True` or when
    `alexprep verify` (or an earlier clean pass of this) has not vouched for the current files,
    every tar is hashed against the SHA-256 recorded when it was written; a clean pass is
    recorded in verified.json where `data` is writable, so the next start skips it; `keep` (a
    file beside the run, for shards mounted read-only) holds the same record and vouches too.
    `hash_files=False` (the other processes of a host: one hashing pass per host is enough)
    stops after the structural check. `say` hears, before it starts, why the slow pass runs;
    `progress`: a bar in bytes (ImageNet's 140 GB take minutes that would otherwise be silent).
    Raises DatasetError if `data` is not a complete dataset or lacks a split, DamagedDataError
    naming every bad shard (and sample, where a member could be pinned down) with how to repair it.
    """
    check_structure(data, splits)
    meta = _checked(data, splits)
    records = [None] if keep is None else [None, keep]  # None: data/verified.json
    if not hash_files or (not full and any(_verified(data, meta, splits, r) for r in records)):
        return
    before = _stamps_or_none(data, meta, splits)
    if say:
        nbytes = sum(v[0] for k, v in (before or {}).items() if k.endswith(".tar"))
        why = "--verify-data full" if full else "`alexprep verify` has not vouched for these files"
        shards = len(before or {}) // 2  # a tar and its index each
        size = tqdm.format_sizeof(nbytes, "B", 1000)  # "81.2kB", "140GB": not "0.0 GB" for a small set
        say(f"{data}: hashing {shards:,} shards ({size}) against their SHA-256 ({why})")
    problems, bad = [], []
    sizes = {name: stamp[0] for name, stamp in (before or {}).items()}  # by path relative to data
    with tqdm(
        total=sum(sizes.values()), unit="B", unit_scale=True, desc="hashing", disable=not progress
    ) as bar:
        for split in splits:
            records = _records(meta, split)
            for i in range(meta["splits"][split]["shards"]):
                tar = layout.tar_path(data, split, i)
                record = records.get(tar.stem)
                why = shard_hash_problem(tar, record) if record else None
                if why:
                    problems.extend(_check_one(data, meta, split, tar) or [why])
                    bad.append(tar)
                pair = (tar, layout.idx_path(tar))
                bar.update(sum(sizes.get(str(p.relative_to(data)), 0) for p in pair))
    if problems:
        raise _damaged(data, problems, bad)
    if before is not None and before == _stamps_or_none(data, meta, splits):
        _record_verified(data, meta, before)
        if keep is not None:
            _record_verified(data, meta, before, keep)


def check_shard(job: tuple[str, int, dict[str, tuple[str, int, bytes]]]) -> tuple[int, list[str]]:
    """One shard -> (samples seen, problems). `expected`: key -> (jpeg sha256, label, json bytes)."""
    tar_str, size, expected = job
    tar, problems = Path(tar_str), []
    name = tar.name
    for path in (tar, layout.idx_path(tar)):
        why = layout.regular_file_problem(path)
        if why:
            return 0, [f"{path.name}: {why}"]
    try:
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            data = {n: tf.extractfile(m).read() for n, m in members.items()}
    except (tarfile.TarError, OSError, EOFError) as e:
        return 0, [f"{name}: unreadable tar ({e})"]
    try:
        index = read_index(layout.idx_path(tar))
    except (ValueError, OSError) as e:
        return 0, [f"{name}: {e}"]
    indexed = {m.name: m for sample in index for m in sample}
    if set(indexed) != set(members):
        problems.append(f"{name}: index lists {len(indexed)} members, tar has {len(members)}")
    for n, m in indexed.items():
        t = members.get(n)
        if t is not None and (t.offset_data, t.size) != (m.offset, m.size):
            problems.append(
                f"{name}: {n}: index says offset {m.offset} size {m.size}, tar has {t.offset_data} {t.size}"
            )
    keys = {n.split(".", 1)[0] for n in members}
    for key in sorted(keys | set(expected)):
        check_stop()
        if key not in expected:
            problems.append(f"{name}: {key}: in the tar but not in the manifest")
            continue
        jpeg = data.get(f"{key}.jpg")
        if jpeg is None:
            problems.append(f"{name}: {key}: in the manifest but missing from the tar")
            continue
        sha, label, meta_json = expected[key]
        extra = sorted(n for n in members if n.startswith(f"{key}.") and n.split(".", 1)[1] not in _EXTS)
        if extra:
            problems.append(f"{name}: {key}: unexpected member(s) {', '.join(extra)}")
        intact = hashlib.sha256(jpeg).hexdigest() == sha
        if not intact:
            problems.append(f"{name}: {key}: checksum mismatch")
        if data.get(f"{key}.cls") != str(label).encode():
            problems.append(f"{name}: {key}: .cls member differs from the manifest's label")
        if data.get(f"{key}.json") != meta_json:
            problems.append(f"{name}: {key}: .json member differs from the manifest")
        if not intact:  # said; decoding it too would add only libjpeg's "Corrupt JPEG data" on stderr
            continue
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.shape != (size, size, 3):
            shape = None if img is None else img.shape
            problems.append(f"{name}: {key}: JPEG does not decode to {size}x{size}x3 ({shape})")
    return len(keys), problems


_EXTS = {"cls", "jpg", "json"}


def _expected(rows: list[dict], classes: list[dict]) -> dict[str, dict[str, tuple[str, int, bytes]]]:
    """shard -> key -> what its members must be, rebuilt from the manifest and classes.json."""
    by_shard: dict[str, dict] = {}
    for r in rows:
        label = r["label"]
        wnid = classes[label].get("wnid") if 0 <= label < len(classes) else None
        meta_json = sample_json(r["source"], r["width"], r["height"], wnid)
        by_shard.setdefault(r["shard"], {})[r["key"]] = (r["sha256"], label, meta_json)
    return by_shard


def read_manifest(
    out: Path, split: str, shard: str | None = None, columns: list[str] | None = None
) -> list[dict]:
    """A split's manifest rows (of one shard); DatasetError naming the file if missing or garbage."""
    path = out / split / layout.MANIFEST
    cols = columns or ["key", "label", "source", "width", "height", "shard", "sha256"]
    try:
        table = layout.read_parquet(path, columns=cols, filters=[("shard", "=", shard)] if shard else None)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing; re-run `alexprep shard` to rebuild it") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises several kinds on a garbage file
        raise DatasetError(
            f"{path}: not a readable manifest ({type(e).__name__}); re-run `alexprep shard`"
        ) from None
    return table.to_pylist()


def _check_one(out: Path, meta: dict, split: str, tar: Path) -> list[str]:
    rows = read_manifest(out, split, tar.name)
    expected = _expected(rows, load_classes(out)).get(tar.name, {})
    return check_shard((str(tar), meta["size"], expected))[1]


def verify(out: Path, workers: int = 1, progress: bool = True) -> list[str]:
    """All problems found in the dataset at `out` (empty: it is intact, and recorded as such)."""
    meta = load_dataset(out)
    classes = load_classes(out, missing=RESTORE_CLASSES)
    splits = sorted(meta["splits"])
    before = _stamps_or_none(out, meta, splits)
    problems, jobs, hashed = [], [], []
    for split in splits:
        counts = meta["splits"][split]
        manifest = read_manifest(out, split)
        if len(manifest) != counts.get("written"):
            problems.append(
                f"{split}: manifest has {len(manifest)} rows, "
                f"dataset.json says {counts.get('written')} written"
            )
        outside = sorted({r["label"] for r in manifest if not 0 <= r["label"] < len(classes)})
        if outside:  # training would die on them ("Target 5 is out of bounds")
            problems.append(
                f"{split}: manifest labels {', '.join(map(str, outside[:5]))} are not classes of "
                f"{layout.CLASSES_JSON} ({len(classes)} classes); it is not this dataset's list"
            )
        by_shard = _expected(manifest, classes)
        records = _records(meta, split)
        for i in range(counts["shards"]):
            tar = layout.tar_path(out, split, i)
            why = layout.regular_file_problem(tar)
            if why:
                problems.append(f"{tar.name}: {why}")
                continue
            _readable(tar)
            jobs.append((str(tar), meta["size"], by_shard.get(tar.name, {})))
            if tar.stem in records:
                hashed.append((tar, records[tar.stem]))
    with fork_pool(workers) as pool:
        results = pool.map(check_shard, jobs)
        for _, found in tqdm(results, total=len(jobs), unit="shard", disable=not progress, desc="verify"):
            problems.extend(found)
        named = {p.split(":", 1)[0] for p in problems}
        for why in pool.map(_hash_job, hashed):
            if why and why.split(":", 1)[0] not in named:  # e.g. a tar header: no member shows it
                problems.append(why)
    if not problems and before is not None and before == _stamps_or_none(out, meta, splits):
        _record_verified(out, meta, before)
    return problems


def _hash_job(job: tuple[Path, dict]) -> str | None:
    tar, record = job
    return shard_problem(tar, record) or shard_hash_problem(tar, record)


def _stamps_or_none(out: Path, meta: dict, splits: Sequence[str]) -> dict | None:
    try:
        return _stamps(out, meta, splits)
    except OSError:
        return None


def _record_verified(out: Path, meta: dict, stamps: dict, path: Path | None = None) -> None:
    """Note the verified files for `preflight` (beside those of other splits verified under the
    same plan) in OUT/verified.json or `path`; a read-only place simply keeps no record."""
    path = path or out / layout.VERIFIED_JSON
    try:
        record = layout.read_json(path)
        kept = record["files"] if record.get("plan_sha256") == meta.get("plan_sha256") else {}
        kept = kept if isinstance(kept, dict) else {}
    except (layout.LayoutError, OSError, AttributeError, KeyError, TypeError):
        kept = {}
    record = {
        "plan_sha256": meta.get("plan_sha256"),
        "verified_at": int(time.time()),
        "files": {**kept, **stamps},
    }
    try:
        layout.write_json(path, record)
    except (OSError, layout.LayoutError):
        pass
