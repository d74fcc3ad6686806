"""What an epoch boundary costs the training loader: old (build at each start) vs new (ahead).

    python bench/epoch_boundary.py [--data OUT] [--work DIR] [--epochs 6] [--batch-size 64]
                                   [--threads 2] [--backend dali reference] [--device cpu]

Without --data it makes, once, under --work (default: a temporary folder) a dataset at
ImageNet's shard count: the 1,000 real ImageNet samples of ../shared/data four times over, at
64px, 8 per shard: 500 training shards, 4,000 samples (small images, so a steady batch is
short and a boundary's cost stands out), and runs pca-stats on it.

For each loader, in the same run and interleaved, with the old behaviour (`ahead=False`:
the pipeline of epoch e built when epoch e is asked for, the eval pipeline per pass) and the new
(epoch e + 1 built and started while e runs, the eval pipeline kept): the steady batch time,
the gap from the last batch of an epoch to the first of the next (median over the boundaries;
`pipeline.bench.epoch_boundaries`), that gap in steady batches (target: <= 1), an epoch's span
(so that work moved from the gap into the epoch shows), and the time to the first batch of an
eval pass after the first pass. Batches go straight to the clock, with no training step between
them: the loader has no idle time in which to hide a build, the hardest case for "ahead".
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import absolute, at_least, batch_fits, cuda_or_error, folder, positive, refused  # noqa: E402
from pipeline.bench import epoch_boundaries, pass_starts  # noqa: E402
from pipeline.loader import EvalLoader, Feed, LoaderConfig, TrainLoader  # noqa: E402
from preprocess.pca import pca_stats  # noqa: E402
from preprocess.shard import Options, shard  # noqa: E402
from preprocess.sources import discover  # noqa: E402
from shards.reader import load_dataset  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
MODES = {"old": False, "new": True}  # TrainLoader(ahead=), EvalLoader(keep=)


def make_boundary_data(dest: Path, copies: int = 4, size: int = 64, shard_size: int = 8) -> Path:
    """The real samples `copies` times over at `size` px, `shard_size` per shard (kept if present)."""
    out = dest / f"shards-{copies}x-{size}px-{shard_size}"
    if (out / "stats.json").is_file():
        return out
    src = dest / f"src-{copies}x"  # links with distinct names: a repeated path would be one input
    src.mkdir(parents=True, exist_ok=True)
    jpegs = sorted(SAMPLES.glob("*.JPEG"))
    if not jpegs:
        raise SystemExit(f"epoch_boundary: no JPEGs in {SAMPLES}; pass --data")
    for jpeg in jpegs:
        for k in range(copies):
            link = src / f"{jpeg.stem}-{k}.JPEG"
            if not link.exists():
                link.symlink_to(jpeg.resolve())
    shard(discover(src, label_from_name=True), out, Options(size=size, shard_size=shard_size, progress=False))
    pca_stats(out, progress=False)
    return out


def run_once(data: Path, cfg: LoaderConfig, feed: Feed, ahead: bool, epochs: int, passes: int) -> dict:
    """One loader's figures: train boundaries, then eval pass starts (on the training split)."""
    train = TrainLoader(data, cfg, feed, epochs=epochs, ahead=ahead)
    result = epoch_boundaries(train, epochs)
    train.close()
    result["eval"] = pass_starts(EvalLoader(data, cfg, feed, split="train", keep=ahead), passes)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=absolute, help="shards (with pca-stats); default: made under --work")
    ap.add_argument("--work", type=folder, help="where the default dataset is made (and kept)")
    ap.add_argument("--epochs", type=at_least(2), default=6, help="per run (a boundary needs two)")
    ap.add_argument("--passes", type=at_least(2), default=3, help="eval passes (the first is not counted)")
    ap.add_argument("--batch-size", type=positive, default=64)
    ap.add_argument("--threads", type=positive, default=2, help="DALI threads / DataLoader workers")
    ap.add_argument("--backend", nargs="+", default=["dali", "reference"], choices=["dali", "reference"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=positive, default=2, help="old/new runs per loader, interleaved")
    a = ap.parse_args()
    cuda_or_error(ap, a.device)
    if a.data is None and not SAMPLES.is_dir():
        ap.error(f"no --data, and no {SAMPLES} to make the dataset from")
    made = time.perf_counter()
    data = a.data or make_boundary_data(a.work or Path(tempfile.mkdtemp(prefix="alexnet-boundary-")))
    made = time.perf_counter() - made
    with refused(ap, "--data "):
        meta = load_dataset(data)
    shards = len(list((data / "train").glob("*.tar")))
    batch_fits(ap, data, meta, a.batch_size)
    size = meta["size"]
    feed = Feed(batch_size=a.batch_size, crop=size - size // 8, device=a.device, rank=0, world=1)
    with refused(ap):  # what the loaders refuse: fewer samples than a batch, no pca-stats, ...
        for backend in a.backend:
            TrainLoader(data, LoaderConfig(backend=backend, num_threads=a.threads), feed, epochs=a.epochs)
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(a.repeats):
        for backend in a.backend:
            for mode, ahead in MODES.items():
                cfg = LoaderConfig(backend=backend, num_threads=a.threads)
                runs.setdefault((backend, mode), []).append(
                    run_once(data, cfg, feed, ahead, a.epochs, a.passes)
                )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; device {a.device}; {data}: {shards} train shards, "
        f"{meta['splits']['train']['written']} samples at {size}px (made in {made:.0f} s); "
        f"batch {a.batch_size}, crop {feed.crop}, {a.threads} threads/workers; {a.epochs} epochs "
        f"({a.epochs - 1} boundaries) x {a.repeats} runs each, medians"
    )
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    head = f"{'loader':<11}{'mode':<5}{'steady ms':>10}{'gap ms':>8}{'gap max':>8}{'gap/steady':>11}"
    print(head + f"{'epoch ms':>9}{'eval 1st ms':>12}")
    for (backend, mode), rs in runs.items():
        ev = statistics.median(r["eval"]["later_first_s"] for r in rs)
        print(
            f"{backend:<11}{mode:<5}{1000 * med(rs, 'steady_s'):>10.1f}{1000 * med(rs, 'gap_s'):>8.1f}"
            f"{1000 * max(r['gap_max_s'] for r in rs):>8.1f}{med(rs, 'gap_in_batches'):>11.2f}"
            f"{1000 * med(rs, 'epoch_s'):>9.0f}{1000 * ev:>12.1f}"
        )
    for backend in a.backend:
        old, new = runs[(backend, "old")], runs[(backend, "new")]
        print(
            f"{backend}: boundary gap old/new {med(old, 'gap_s') / med(new, 'gap_s'):.1f}x; "
            f"new gap = {med(new, 'gap_in_batches'):.2f} steady batches (target <= 1)"
        )
    print(
        "all gaps, ms:",
        {f"{b}/{m}": [round(1000 * g, 1) for r in rs for g in r["gaps_s"]] for (b, m), rs in runs.items()},
    )


if __name__ == "__main__":
    main()
