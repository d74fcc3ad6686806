"""Read a sharded dataset back: its metadata, its shard list, and samples through the index."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shards import layout
from shards.index import read_index


class DatasetError(Exception):
    """The folder is not a complete sharded dataset (or lacks the split asked for)."""


class DamagedDataError(ValueError):
    """Shards that do not match what was written; the message names each shard (and sample)."""


@dataclass(frozen=True)
class Sample:
    key: str
    label: int
    jpeg: bytes


def load_dataset(out: Path) -> dict:
    path = out / layout.DATASET_JSON
    if out.exists() and not out.is_dir():  # "no dataset.json" would send the user to re-shard
        raise DatasetError(f"{out}: not a folder (a sharded dataset is the folder `alexprep shard` wrote)")
    if not out.exists():  # a mistyped path: re-sharding is not the cure
        raise DatasetError(f"{out}: no such folder")
    if not path.is_file():
        raise DatasetError(f"{out}: no {layout.DATASET_JSON}; run `alexprep shard SRC {out}`")
    try:
        meta = layout.read_json(path)
    except layout.LayoutError as e:
        raise DatasetError(f"{e}; re-run `alexprep shard` into an empty OUT") from None
    if not isinstance(meta, dict) or "format_version" not in meta:  # not alexprep's: re-running loops
        raise DatasetError(
            f"{path}: not a dataset.json that `alexprep shard` wrote (no format_version); "
            "shard into an empty OUT"
        )
    if not meta.get("complete"):
        busy = layout.writer_of(out)
        if busy:  # "re-run alexprep shard" would start a second writer
            raise DatasetError(f"{out}: `alexprep shard` ({busy}) is writing it now; wait for it to finish")
        raise DatasetError(f"{out}: sharding is not complete; re-run `alexprep shard` to finish")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not all(
        isinstance(c, dict) and isinstance(c.get("shards"), int) for c in splits.values()
    ):
        raise DatasetError(f"{path}: `splits` is missing or malformed")
    if not isinstance(meta.get("size"), int):
        raise DatasetError(f"{path}: `size` is missing or malformed")
    return meta


def images_digest(meta: dict, split: str) -> str | None:
    """One SHA-256 over the split's shard tars as dataset.json records them (each tar's own
    SHA-256, in order): it changes exactly when a stored image does (the tars are byte-
    reproducible). None where a shard has no record (an older dataset)."""
    counts = (meta.get("splits") or {}).get(split) or {}
    files, n = counts.get("files") or {}, counts.get("shards")
    names = [layout.shard_name(split, i) for i in range(n if isinstance(n, int) else 0)]
    if not names or not all(isinstance(files.get(x), dict) and files[x].get("tar_sha256") for x in names):
        return None
    return hashlib.sha256("".join(f"{x}\t{files[x]['tar_sha256']}\n" for x in names).encode()).hexdigest()


def shard_paths(out: Path, split: str) -> list[Path]:
    """The split's tars in order; each must have its index (DALI cannot use a bare tar)."""
    meta = load_dataset(out)
    if split not in meta["splits"]:
        raise DatasetError(f"{out}: no {split} split (have: {', '.join(sorted(meta['splits']))})")
    n = meta["splits"][split]["shards"]
    tars = [layout.tar_path(out, split, i) for i in range(n)]
    for t in tars:
        if not t.is_file():
            raise DatasetError(f"{t}: shard missing")
        if not layout.idx_path(t).is_file():
            raise DatasetError(f"{layout.idx_path(t)}: index file missing (DALI needs it)")
    return tars


def iter_shard(tar: Path) -> Iterator[Sample]:
    """Samples of one shard in stored order, read by the index's offsets (no tar scan).

    A member that the index places beyond the end of the tar, or a label that is not a number,
    raises DamagedDataError naming the shard and the sample.
    """
    try:
        index = read_index(layout.idx_path(tar))
    except (ValueError, OSError) as e:
        raise DamagedDataError(f"{tar.name}: index unreadable ({e}); {repair_hint(tar)}") from None
    with open(tar, "rb") as f:
        for members in index:
            parts = {}
            key = members[0].name.split(".", 1)[0]
            for m in members:
                f.seek(m.offset)
                parts[m.ext] = f.read(m.size)
                if len(parts[m.ext]) != m.size:
                    raise DamagedDataError(f"{tar.name}: sample {key}: truncated tar; {repair_hint(tar)}")
            try:
                label = int(parts["cls"])
                jpeg = parts["jpg"]
            except (KeyError, ValueError):
                raise DamagedDataError(
                    f"{tar.name}: sample {key}: missing or garbled .cls/.jpg member; {repair_hint(tar)}"
                ) from None
            yield Sample(key, label, jpeg)


def repair_hint(tar: Path) -> str:
    """How to rebuild one shard, byte-identical, from the source."""
    return (
        f"repair: re-run `alexprep shard SRC OUT ... --redo-shard {tar.stem}` with the original "
        "arguments (or delete its parts/*.parquet and re-run)"
    )


VAL_SPLITS = ("val", "validation", "test")  # the split evaluated when none is named, first found


RESTORE_CLASSES = "restore it by re-running `alexprep shard` with the original arguments"


def load_classes(out: Path, missing: str = "pass the shards the model was trained on") -> list[dict]:
    """OUT/classes.json: one {index, name, wnid, label} per class, in index order. `missing`: what
    to do when there is none, in the caller's terms (a model's data, or `verify`'s dataset)."""
    path = out / layout.CLASSES_JSON
    if not path.is_file():
        raise DatasetError(f"{out}: no {layout.CLASSES_JSON}; {missing}")
    try:
        classes = layout.read_json_list(path)
    except layout.LayoutError as e:
        raise DatasetError(str(e)) from None
    if not all(isinstance(c, dict) and "index" in c for c in classes):
        raise DatasetError(f"{path}: not a list of classes with an index each")
    if [c["index"] for c in classes] != list(range(len(classes))):
        raise DatasetError(f"{path}: class indices are not 0..{len(classes) - 1} in order")
    try:  # the shards' labels run to dataset.json's class count: a shortened list is not theirs
        stated = layout.read_json(out / layout.DATASET_JSON).get("num_classes")
    except layout.LayoutError:
        stated = None
    if isinstance(stated, int) and stated != len(classes):
        raise DatasetError(
            f"{path}: lists {len(classes)} classes, dataset.json says {stated}; {RESTORE_CLASSES}"
        )
    return classes


def classes_without_samples(out: Path, split: str, classes: list[dict]) -> list[str]:
    """Names of the classes with no written sample in `split` (every image of them rejected)."""
    import pyarrow as pa

    path = out / split / layout.MANIFEST
    try:
        labels = set(layout.read_parquet(path, columns=["label"])["label"].to_pylist())
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(
            f"{path}: not a readable manifest ({type(e).__name__}); re-run `alexprep shard`"
        ) from None
    return [str(c.get("name")) for c in classes if c["index"] not in labels]


def require_images(out: Path, meta: dict, split: str, how: str = "") -> None:
    """Refuse a split with no image written (empty class folders, or every image rejected): DALI
    would fail on it as if a shard were damaged, and a tally over it would score 0 of 0 as 100 %
    error, the number a plateau schedule and best.pt would then follow."""
    if not meta["splits"][split].get("written"):
        raise DatasetError(
            f"{out}/{split}: the {split} split holds no image (none was found or every one was "
            f"rejected when sharding: see {split}/{layout.REJECTS}){how}"
        )


def default_val_split(meta: dict) -> str | None:
    """The split to validate on when none is named: val, validation or test, whichever exists."""
    return next((s for s in VAL_SPLITS if s in meta["splits"]), None)
