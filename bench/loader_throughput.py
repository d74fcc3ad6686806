"""Training-loader throughput: DALI (CPU here, GPU with --device cuda) vs the reference loader.

    python bench/loader_throughput.py [--data OUT] [--batches 60] [--batch-size 128] [--repeats 3]
                                      [--crop 224] [--device cpu|cuda]

Without --data it shards the 1,000 real ImageNet samples of ../shared/data four times over
(4,000 samples, 256px, so epochs are long enough to measure) and runs pca-stats on them.

Both loaders run the full paper augmentation (random 224 crop, mirror, PCA lighting, per-pixel
mean image; on shards stored under 256px a crop of 7/8 of their size, unless --crop says)
from the same shards in the same run, with the same number of CPU workers (DALI threads /
DataLoader processes), measured by `pipeline.bench.measure` in steady state:
one stream of batches across epochs, the same untimed warm-up for both, then `--batches` timed
batches (epoch changes inside them included). Also images per CPU-second over a whole epoch
(process + workers; `pipeline.bench.cpu_efficiency`), which a shared, loaded machine distorts
far less than wall-clock rates. Repeats are interleaved; the median of each is printed beside
the baseline of the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import absolute, at_least, batch_fits, cuda_or_error, positive, refused  # noqa: E402
from pipeline.bench import cpu_efficiency, measure  # noqa: E402
from pipeline.loader import Feed, LoaderConfig, TrainLoader  # noqa: E402
from preprocess.pca import pca_stats  # noqa: E402
from preprocess.shard import Options, shard  # noqa: E402
from preprocess.sources import discover  # noqa: E402
from shards.reader import load_dataset  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"


def make_bench_data(dest: Path, copies: int = 4) -> Path:
    labels = dest / "labels.csv"
    names = sorted(p.name for p in SAMPLES.glob("*.JPEG"))
    labels.write_text("".join(f"{n},{n.split('_')[0]}\n" for n in names for _ in range(copies)))
    out = dest / "shards"
    shard(discover(SAMPLES, labels), out, Options(shard_size=250, progress=False))
    pca_stats(out, progress=False)
    return out


def images_per_second(data: Path, opt: tuple[LoaderConfig, Feed], batches: int, warmup: int) -> float:
    return measure(TrainLoader(data, *opt), batches, warmup)["img_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=absolute, help="shards (with pca-stats); default: made from the samples")
    ap.add_argument("--batches", type=positive, default=60, help="timed batches")
    ap.add_argument("--warmup", type=at_least(0), default=5, help="untimed batches first")
    ap.add_argument("--batch-size", type=positive, default=128)
    ap.add_argument(
        "--workers", type=positive, default=os.cpu_count(), help="DALI threads / DataLoader workers"
    )
    ap.add_argument("--repeats", type=positive, default=3)
    ap.add_argument("--crop", type=positive, help="default: 224, or 7/8 of the images' size if less")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    cuda_or_error(ap, args.device)
    if args.data is None:
        if not SAMPLES.is_dir():
            ap.error(f"no --data, and no {SAMPLES} to make the bench set from")
        args.data = make_bench_data(Path(tempfile.mkdtemp(prefix="alexnet-bench-")))
    with refused(ap, "--data "):
        meta = load_dataset(args.data)
    batch_fits(ap, args.data, meta, args.batch_size)
    size = meta["size"]
    crop = args.crop or min(224, size - size // 8)
    if crop > size:
        ap.error(f"--crop {crop}: larger than the {size}px images of {args.data}")
    feed = Feed(batch_size=args.batch_size, crop=crop, device=args.device)
    with refused(ap):  # what else the loaders refuse: fewer samples than a batch, no pca-stats, ...
        for backend in ("reference", "dali"):
            TrainLoader(args.data, LoaderConfig(backend=backend, num_threads=args.workers), feed)
    names = {"reference": "reference (DataLoader + OpenCV)", "dali": "DALI"}
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(args.repeats):  # interleaved
        for backend in names:
            opt = (LoaderConfig(backend=backend, num_threads=args.workers), feed)
            wall[backend].append(images_per_second(args.data, opt, args.batches, args.warmup))
            cpu[backend].append(cpu_efficiency(TrainLoader(args.data, *opt))["img_per_cpu_s"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"device {args.device}; batch {args.batch_size}, crop {crop} of {size}px; {args.workers} workers; "
        f"{args.warmup} + {args.batches} batches; median of {args.repeats}"
    )
    print(f"{'loader':<34}{'img/s':>10}{'img/CPU-s':>12}")
    for k, name in names.items():
        print(f"{name:<34}{statistics.median(wall[k]):>10.1f}{statistics.median(cpu[k]):>12.1f}")
    ratio = lambda d: statistics.median(d["dali"]) / statistics.median(d["reference"])  # noqa: E731
    print(f"{'DALI / reference':<34}{ratio(wall):>9.2f}x{ratio(cpu):>11.2f}x")
    print("all runs, img/s:", {k: [round(v) for v in vs] for k, vs in wall.items()})
    print("all runs, img/CPU-s:", {k: [round(v) for v in vs] for k, vs in cpu.items()})


if __name__ == "__main__":
    main()
