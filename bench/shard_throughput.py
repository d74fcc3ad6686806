"""Shard throughput on the real ImageNet samples, beside a plain PIL script in the same run.

    python bench/shard_throughput.py [--images DIR] [--repeats 3]

Baseline: for each file, PIL open -> convert RGB -> resize shorter side to 256 -> centre crop ->
save JPEG q90 (one process). Ours: `alexprep shard` (the real code path, tars + index + manifest)
with 1 and 2 workers. Prints img/s, the per-core ratio and the 1->2 worker scaling.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from preprocess.shard import Options, shard
from preprocess.sources import discover

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def pil_baseline(files: list[Path], dest: Path, size: int = 256) -> float:
    start = time.perf_counter()
    for i, f in enumerate(files):
        img = Image.open(f).convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))))
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img.crop((left, top, left + size, top + size)).save(dest / f"{i}.jpg", quality=90)
    return len(files) / (time.perf_counter() - start)


def ours(src: Path, labels: Path, dest: Path, workers: int) -> tuple[float, float]:
    """(img/s of the image phase, img/s end to end incl. planning and the manifest merge)."""
    source = discover(src, labels)
    # 40 shards of 25: like ImageNet's 513 shards of 2,500, many more shards than workers, so the
    # tail (the last shard of each worker) is a small part of the run, as it is at full scale
    opt = Options(workers=workers, shard_size=25, progress=False)
    start = time.perf_counter()
    s = shard(source, dest, opt)
    return s.images_processed / s.seconds, s.images_processed / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    files = sorted(args.images.glob("*.JPEG"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        labels = tmp / "labels.csv"
        with open(labels, "w", newline="") as f:
            csv.writer(f).writerows([(p.name, p.name.split("_")[0]) for p in files])
        runs: dict[str, list] = {"pil": [], "w1": [], "w2": []}
        for r in range(args.repeats):  # interleaved, so drift hits all three alike
            (tmp / f"pil{r}").mkdir()
            pil = pil_baseline(files, tmp / f"pil{r}")
            runs["pil"].append((pil, pil))
            runs["w1"].append(ours(args.images, labels, tmp / f"w1-{r}", 1))
            runs["w2"].append(ours(args.images, labels, tmp / f"w2-{r}", 2))
    med = {k: statistics.median(x[0] for x in v) for k, v in runs.items()}
    e2e = {k: statistics.median(x[1] for x in v) for k, v in runs.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{len(files)} images; median of {args.repeats}"
    )
    print(f"{'run':<28}{'img/s':>10}{'end-to-end':>12}")
    for k, name in (
        ("pil", "PIL script (1 process)"),
        ("w1", "alexprep shard --workers 1"),
        ("w2", "alexprep shard --workers 2"),
    ):
        print(f"{name:<28}{med[k]:>10.1f}{e2e[k]:>12.1f}")
    print(f"per core vs PIL: {med['w1'] / med['pil']:.2f}x (target >= 1.15x)")
    print(
        f"1->2 worker scaling: {med['w2'] / (2 * med['w1']) * 100:.0f}% of linear (target >= 90%); "
        f"end to end, with the fixed planning and merge: {e2e['w2'] / (2 * e2e['w1']) * 100:.0f}%"
    )


if __name__ == "__main__":
    main()
