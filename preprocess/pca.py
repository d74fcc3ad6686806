"""`alexprep pca-stats`: the training set's RGB statistics, for mean subtraction and PCA lighting.

Paper, section 4.1: "perform PCA on the set of RGB pixel values throughout the ImageNet training
set", and section 2: subtract "the mean activity over the training set from each pixel".

Exactness: pixels are uint8, so per-worker partial sums of x, x x^T and the per-pixel image sum
are kept as int64 (ImageNet: at most 1.3M x 65,536 x 255^2 = 5.5e15 < 2^63) and merged by
integer addition. The result is therefore identical for any worker count and shard order, and
the float64 moments computed from the totals are exact up to one final rounding.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from shards import layout
from shards.pool import check_stop, fork_pool
from shards.reader import (
    DamagedDataError,
    DatasetError,
    images_digest,
    iter_shard,
    load_dataset,
    repair_hint,
    shard_paths,
)
from shards.verify import check_structure, read_manifest

PIXEL_SCALE = 255


@dataclass
class Moments:
    """Integer sufficient statistics of a set of RGB images (merge by `+`)."""

    images: int
    pixels: int
    sum_rgb: np.ndarray  # (3,) int64
    sum_outer: np.ndarray  # (3, 3) int64
    sum_image: np.ndarray  # (H, W, 3) int64

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.images + other.images,
            self.pixels + other.pixels,
            self.sum_rgb + other.sum_rgb,
            self.sum_outer + other.sum_outer,
            self.sum_image + other.sum_image,
        )

    @staticmethod
    def zero(size: int) -> Moments:
        z = np.zeros
        return Moments(0, 0, z(3, np.int64), z((3, 3), np.int64), z((size, size, 3), np.int64))


def decode_rgb(jpeg: bytes, size: int | None = None) -> np.ndarray | None:
    """The stored JPEG as RGB; None if it does not decode (to size x size x 3, when given)."""
    try:
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if bgr is None or (size is not None and bgr.shape != (size, size, 3)):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_moments(rgb: np.ndarray) -> Moments:
    x = rgb.reshape(-1, 3).astype(np.int64)
    return Moments(1, x.shape[0], x.sum(0), x.T @ x, rgb.astype(np.int64))


def shard_moments(job: tuple[str, int, int]) -> Moments:
    """All (or the first `limit`) images of one shard, in a worker process."""
    tar, size, limit = job
    cv2.setNumThreads(1)
    total = Moments.zero(size)
    for n, sample in enumerate(iter_shard(Path(tar))):
        if n == limit:
            break
        check_stop()
        rgb = decode_rgb(sample.jpeg, size)
        if rgb is None:
            raise DamagedDataError(
                f"{Path(tar).name}: sample {sample.key}: stored JPEG does not decode to "
                f"{size}x{size}x3; {repair_hint(Path(tar))}"
            )
        total = total + image_moments(rgb)
    return total


def eigh_sorted(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues descending; eigenvector columns with their largest-magnitude entry positive.

    The sign of an eigenvector is arbitrary; fixing it makes stats.json reproducible across
    LAPACK builds (and PCA lighting is symmetric in alpha, so the choice does not matter).
    """
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1]
    val, vec = val[order], vec[:, order]
    signs = np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(3)])
    return val, vec * signs


def stats_from(m: Moments) -> tuple[dict, np.ndarray]:
    mean = m.sum_rgb / m.pixels
    cov = m.sum_outer / m.pixels - np.outer(mean, mean)  # population covariance of all pixels
    eigval, eigvec = eigh_sorted(cov)
    stats = {
        "pixel_scale": PIXEL_SCALE,
        "num_images": m.images,
        "num_pixels": m.pixels,
        "mean_rgb": mean.tolist(),
        "std_rgb": np.sqrt(np.diag(cov)).tolist(),
        "cov_rgb": cov.tolist(),
        "eigval": eigval.tolist(),
        "eigvec": eigvec.tolist(),
    }
    return stats, (m.sum_image / m.images).astype(np.float32)


def plan_jobs(out: Path, size: int, max_images: int | None) -> list[tuple[str, int, int]]:
    """One job per train shard; with --max-images, the first images in (shuffled) shard order."""
    jobs, left = [], max_images
    tars = shard_paths(out, "train")  # first: it names a missing split or shard clearly
    manifest_counts = _per_shard_counts(out)
    for tar in tars:
        n = manifest_counts.get(tar.name, 0)
        take = n if left is None else min(n, left)
        if take:
            jobs.append((str(tar), size, take))
        if left is not None:
            left -= take
            if left == 0:
                break
    return jobs


def _per_shard_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in read_manifest(out, "train", columns=["shard"]):
        counts[row["shard"]] = counts.get(row["shard"], 0) + 1
    return counts


def pca_stats(out: Path, workers: int = 0, max_images: int | None = None, progress: bool = True) -> dict:
    """Compute and write OUT/stats.json and OUT/mean_image.npy; returns the stats."""
    meta = load_dataset(out)
    check_structure(out, ["train"])  # a truncated shard is named up front, with how to repair it
    jobs = plan_jobs(out, meta["size"], max_images)
    if not jobs:  # the moments of no pixels are NaN, never statistics
        found = meta["splits"]["train"].get("found")
        why = f"all {found} of its inputs were rejected, see {out / 'train' / layout.REJECTS}"
        raise DatasetError(
            f"{out}: no images in its train split ({why if found else 'it had no inputs'}); "
            "add or fix its images and re-shard"
        )
    # a read-only OUT is said now, not after the whole pass; pca-stats writes only into OUT
    layout.check_writable(out, elsewhere=f"copy {out} to a writable place and run pca-stats on the copy")
    layout.remove_stale_tmp(out)  # what a killed or failed run left
    total = Moments.zero(meta["size"])
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=sum(j[2] for j in jobs), unit="img", disable=not progress, desc="pca-stats")
    with fork_pool(workers) as pool:
        for done in as_completed([pool.submit(shard_moments, job) for job in jobs]):
            m = done.result()  # a worker's DamagedDataError is raised here
            total = total + m
            bar.update(m.images)
    bar.close()
    stats, mean_image = stats_from(total)
    stats["computed_from"] = {
        "split": "train",
        "shards": len(jobs),
        "max_images": max_images,
        "estimate": max_images is not None and total.images < meta["splits"]["train"]["written"],
        "dataset_plan_sha256": meta["plan_sha256"],
        "train_images_sha256": images_digest(meta, "train"),  # a shard redone from changed files
        "decoder": f"OpenCV {cv2.__version__} (libjpeg-turbo)",
    }
    buf = io.BytesIO()
    np.save(buf, mean_image)
    # the pair: stats.json names its mean image's hash (checked by `load_stats`) and is written
    # last, so a failure between the two files is a mismatch that is refused, never used
    stats["computed_from"]["mean_image_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    layout.write_atomic(out / layout.MEAN_IMAGE, buf.getvalue())
    layout.write_json(out / layout.STATS_JSON, stats)
    return stats
