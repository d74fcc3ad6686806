"""`alexprep verify`: re-read every shard and check it against its index, manifest and metadata.

Independent of the writer on purpose: offsets are re-derived by parsing the tar with `tarfile`,
JPEGs are decoded, checksums recomputed. One flipped byte anywhere shows up by name.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from shards import layout
from shards.index import read_index
from shards.reader import load_dataset


def check_shard(job: tuple[str, int, dict[str, tuple[str, int]]]) -> tuple[int, list[str]]:
    """One shard -> (samples seen, problems). `expected`: key -> (sha256, label)."""
    tar_str, size, expected = job
    tar, problems = Path(tar_str), []
    name = tar.name
    try:
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            data = {n: tf.extractfile(m).read() for n, m in members.items()}
    except (tarfile.TarError, OSError) as e:
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
        if key not in expected:
            problems.append(f"{name}: {key}: in the tar but not in the manifest")
            continue
        jpeg = data.get(f"{key}.jpg")
        if jpeg is None:
            problems.append(f"{name}: {key}: in the manifest but missing from the tar")
            continue
        sha, label = expected[key]
        if hashlib.sha256(jpeg).hexdigest() != sha:
            problems.append(f"{name}: {key}: checksum mismatch")
        if data.get(f"{key}.cls", b"").strip() != str(label).encode():
            problems.append(f"{name}: {key}: label differs from the manifest")
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.shape != (size, size, 3):
            shape = None if img is None else img.shape
            problems.append(f"{name}: {key}: JPEG does not decode to {size}x{size}x3 ({shape})")
    return len(keys), problems


def verify(out: Path, workers: int = 1, progress: bool = True) -> list[str]:
    """All problems found in the dataset at `out` (empty: it is intact)."""
    meta = load_dataset(out)
    problems, jobs = [], []
    for split, counts in sorted(meta["splits"].items()):
        manifest = pq.read_table(out / split / layout.MANIFEST).to_pylist()
        if len(manifest) != counts["written"]:
            problems.append(
                f"{split}: manifest has {len(manifest)} rows, dataset.json says {counts['written']} written"
            )
        by_shard: dict[str, dict] = {}
        for r in manifest:
            by_shard.setdefault(r["shard"], {})[r["key"]] = (r["sha256"], r["label"])
        for i in range(counts["shards"]):
            tar = layout.tar_path(out, split, i)
            if not tar.is_file():
                problems.append(f"{tar.name}: shard missing")
                continue
            jobs.append((str(tar), meta["size"], by_shard.get(tar.name, {})))
    ctx = mp.get_context("fork")
    with ctx.Pool(max(1, workers)) as pool:
        results = pool.imap(check_shard, jobs)
        for _, found in tqdm(results, total=len(jobs), unit="shard", disable=not progress, desc="verify"):
            problems.extend(found)
    return problems
