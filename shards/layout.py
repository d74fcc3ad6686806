"""Names and atomic writes: where every file of a sharded dataset lives, and how it appears.

OUT/dataset.json              format version, arguments, counts (complete: true when done)
OUT/classes.json              index -> name, wnid, human-readable label
OUT/<split>/<split>-000000.tar   WebDataset shard: <key>.cls, <key>.jpg, <key>.json
OUT/<split>/<split>-000000.idx   DALI index (wds2idx format), so DALI never scans tars
OUT/<split>/parts/<split>-000000.parquet   this shard's manifest rows; its presence is
                              the shard's commit marker (written last, atomically)
OUT/<split>/manifest.parquet  all written samples of the split (merged from parts)
OUT/<split>/rejects.parquet   every input that was not written, with the reason
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
CLASSES_JSON = "classes.json"
STATS_JSON = "stats.json"
MEAN_IMAGE = "mean_image.npy"
MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
PARTS = "parts"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def tar_path(out: Path, split: str, index: int) -> Path:
    return out / split / f"{shard_name(split, index)}.tar"


def idx_path(tar: Path) -> Path:
    return tar.with_suffix(".idx")


def part_path(out: Path, split: str, index: int) -> Path:
    return out / split / PARTS / f"{shard_name(split, index)}.parquet"


def tmp_path(path: Path) -> Path:
    """A sibling name no reader globs for (`.x.tar.tmp`), so half-written files are never seen."""
    return path.with_name(f".{path.name}.tmp")


def commit(tmp: Path, final: Path) -> None:
    """fsync then rename: after a crash `final` is either absent or complete, never partial."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    tmp.write_bytes(data)
    commit(tmp, path)


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
