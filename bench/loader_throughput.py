"""Training-loader throughput: DALI (CPU here, GPU with --device cuda) vs the reference loader.

    python bench/loader_throughput.py [--data OUT] [--batches 60] [--batch-size 128] [--repeats 3]

Without --data it shards the 1,000 real ImageNet samples of ../shared/data four times over
(4,000 samples, 256px, so epochs are long enough to measure) and runs pca-stats on them.

Both loaders run the full paper augmentation (random 224 crop, mirror, PCA lighting, per-pixel
mean image) from the same shards in the same run, with the same number of CPU workers
(DALI threads / DataLoader processes), measured by `pipeline.bench.measure` in steady state:
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
import tempfile
from pathlib import Path

from pipeline.bench import cpu_efficiency, measure
from pipeline.loader import Feed, LoaderConfig, TrainLoader
from preprocess.pca import pca_stats
from preprocess.shard import Options, shard
from preprocess.sources import discover

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
    ap.add_argument("--data", type=Path)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.data is None:
        args.data = make_bench_data(Path(tempfile.mkdtemp(prefix="alexnet-bench-")))
    feed = Feed(batch_size=args.batch_size, device=args.device)
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
        f"device {args.device}; batch {args.batch_size}; {args.workers} workers; "
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
