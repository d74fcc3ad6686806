"""Training img/s: DALI input vs synthetic input vs the reference loader, the real step, like with like.

    python bench/train_throughput.py --data OUT [--arch cifar|alexnet] [--device cpu|cuda]
        [--batch-size 128] [--warm 3] [--steps 20] [--repeats 3]

Every input goes through `trainer.train.train_epoch` (forward, loss, backward, the paper's SGD)
via trainer.bench.train_rate: a fresh model each time, the same `--warm` untimed steps (they
hold the pipeline build / worker fork and the first kernels), then the same `--steps` timed
steps from one running stream of batches:
- synthetic: one fixed random batch already on the device, so input costs nothing: the ceiling;
- dali: the training loader's DALI pipeline with the full paper augmentation;
- reference: the same loader's webdataset + DataLoader backend (OpenCV/numpy, worker processes).
The timed window must fit in one epoch (refused otherwise), so no epoch start (a pipeline build,
which a real ImageNet epoch of thousands of steps amortises) is ever timed. Repeats are
interleaved (synthetic, dali, reference, synthetic, ...) so load from other processes hits all
three alike; medians are printed, with images per CPU-second (this process and its DataLoader
workers), which depends far less on that load than wall-clock rates do.
The project's figure is dali / synthetic (target on one H100 with AlexNet: >= 95 %).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import absolute, output, positive  # noqa: E402
from pipeline.bench import Epochs  # noqa: E402
from pipeline.loader import TrainLoader  # noqa: E402
from shards.reader import DatasetError, load_classes, load_dataset  # noqa: E402
from trainer.bench import Rate, train_rate  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.distributed import Env  # noqa: E402
from trainer.train import feed  # noqa: E402

INPUTS = ("synthetic", "dali", "reference")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=absolute, required=True, help="shards (alexprep shard + pca-stats)")
    ap.add_argument("--arch", default="cifar", choices=["cifar", "alexnet"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch-size", type=positive, default=128)
    ap.add_argument("--warm", type=positive, default=3, help="untimed steps first, for every input")
    ap.add_argument("--steps", type=positive, default=20, help="timed steps, for every input")
    threads = "DALI threads / DataLoader workers"
    ap.add_argument("--threads", type=positive, default=os.cpu_count(), help=threads)
    ap.add_argument("--repeats", type=positive, default=3)
    ap.add_argument("--json", type=output, help="write the figures here (checked before the run)")
    args = ap.parse_args()
    try:
        meta, classes = load_dataset(args.data), len(load_classes(args.data))
    except (DatasetError, OSError, ValueError) as e:
        ap.error(str(e))
    crop = 224 if args.arch == "alexnet" else min(32, meta["size"])
    cfg = TrainConfig.of(
        data=str(args.data),
        arch=args.arch,
        num_classes=classes,
        crop=crop,
        global_batch=args.batch_size,
        num_threads=args.threads,
        device=args.device,
    )
    dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    env = Env(0, 1, 0, [dev], batch=args.batch_size)
    configs = {name: cfg.replace(loader=name) for name in ("dali", "reference")}
    try:
        loaders = {name: TrainLoader(args.data, c.loader, feed(c, env)) for name, c in configs.items()}
    except (DatasetError, OSError, ValueError) as e:  # e.g. fewer samples than one batch
        ap.error(str(e))
    per_epoch = loaders["dali"].steps_per_epoch
    if args.warm + args.steps > per_epoch:
        ap.error(
            f"--warm {args.warm} + --steps {args.steps} > {per_epoch} steps per epoch of {args.data} at "
            f"batch {args.batch_size}: an epoch start (pipeline build) would be timed; use fewer steps, "
            "a smaller batch or more data"
        )
    x = torch.randn(args.batch_size, 3, crop, crop, device=dev) * 60
    y = torch.randint(0, classes, (args.batch_size,), device=dev)

    def batches(name: str):  # noqa: ANN202 - a fresh stream per measurement, built in the warm-up
        return itertools.repeat((x, y)) if name == "synthetic" else Epochs(loaders[name])

    runs: dict[str, list[Rate]] = {name: [] for name in INPUTS}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all three alike
        for name in INPUTS:
            rate = train_rate(configs.get(name, cfg), env, batches(name), args.warm, args.steps)
            assert rate.starts == 0, "an epoch start was timed"
            runs[name].append(rate)
            print(f"  {name:<10}{rate.img_per_s:>9.1f} img/s {rate.img_per_cpu_s:>9.1f} img/CPU-s")
    wall = {n: statistics.median(r.img_per_s for r in v) for n, v in runs.items()}
    cpu = {n: statistics.median(r.img_per_cpu_s for r in v) for n, v in runs.items()}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f}; device {dev}; torch threads "
        f"{torch.get_num_threads()}; arch {args.arch}, batch {args.batch_size}, crop {crop}; "
        f"{args.warm} warm + {args.steps} timed steps each, median of {args.repeats} interleaved"
    )
    print(f"{'input':<12}{'img/s':>10}{'img/CPU-s':>12}")
    for name in INPUTS:
        print(f"{name:<12}{wall[name]:>10.1f}{cpu[name]:>12.1f}")
    for base in ("synthetic", "reference"):
        print(
            f"dali / {base}: {wall['dali'] / wall[base]:.2f}x wall-clock, "
            f"{cpu['dali'] / cpu[base]:.2f}x per CPU-second"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "load": load}
                | {n: [asdict(r) for r in v] for n, v in runs.items()},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
