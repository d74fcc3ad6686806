"""Training img/s: the real pipeline vs synthetic input vs a torchvision-style loop, same model.

    python bench/train_throughput.py --data OUT [--arch cifar|alexnet] [--device cpu|cuda] [--steps 30]

All three run `trainer.train.train_epoch` (the real training step: forward, loss, backward, the
paper's SGD) on the same model and device in the same process:
- synthetic: a fixed random batch already on the device, so the loader costs nothing: the
  model's ceiling;
- dali: the DALI pipeline with the full paper augmentation;
- reference: the torchvision-style DataLoader (webdataset + OpenCV/numpy transforms in worker
  processes).
The project's figure is dali / synthetic: how close the loader lets the model run to its
ceiling (target on one H100 with AlexNet: >= 95 %).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from pipeline.loader import TrainLoader
from shards.reader import load_classes
from trainer.config import TrainConfig
from trainer.model import build_model
from trainer.optim import PaperSGD, param_groups
from trainer.train import Env, loader_options, train_epoch


class Synthetic:
    """A loader with TrainLoader's interface that yields one fixed batch: no input cost."""

    def __init__(self, batch: int, crop: int, classes: int, device: torch.device, steps: int):
        self.x = torch.randn(batch, 3, crop, crop, device=device) * 60
        self.y = torch.randint(0, classes, (batch,), device=device)
        self.steps_per_epoch = steps

    def epoch(self, _epoch: int):  # noqa: ANN201
        for _ in range(self.steps_per_epoch):
            yield self.x, self.y


def measure(cfg: TrainConfig, env: Env, loader, steps: int) -> float:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model(cfg.model_config()).to(env.devices[0])
    if env.devices[0].type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = PaperSGD(param_groups(model, cfg.weight_decay, False), lr=cfg.lr)
    warm = TrainConfig(**{**cfg.to_dict(), "steps_per_epoch": 3})
    train_epoch(model, opt, loader, 0, warm, env, False)  # warm-up: kernels, allocator, pipeline
    timed = TrainConfig(**{**cfg.to_dict(), "steps_per_epoch": steps})
    if env.devices[0].type == "cuda":
        torch.cuda.synchronize()
    return train_epoch(model, opt, loader, 1, timed, env, False)["img_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", default="cifar", choices=["cifar", "alexnet"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    meta = json.loads((args.data / "dataset.json").read_text())
    classes = len(load_classes(args.data))
    crop = 224 if args.arch == "alexnet" else min(32, meta["size"])
    cfg = TrainConfig(
        data=str(args.data),
        arch=args.arch,
        num_classes=classes,
        crop=crop,
        batch_size=args.batch_size,
        num_threads=args.threads,
        device=args.device,
    )
    dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    env = Env(0, 1, 0, [dev])
    loaders = {"synthetic": (cfg, Synthetic(args.batch_size, crop, classes, dev, args.steps + 3))}
    for backend in ("dali", "reference"):
        c = TrainConfig(**{**cfg.to_dict(), "loader": backend})
        loaders[backend] = (c, TrainLoader(args.data, loader_options(c, env)))
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):  # interleaved, so drift hits all three alike
        for name, (c, loader) in loaders.items():
            runs[name].append(measure(c, env, loader, args.steps))
    results = {name: statistics.median(v) for name, v in runs.items()}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, device {dev}; arch {args.arch}, "
        f"batch {args.batch_size}, {args.steps} timed steps"
    )
    for name, rate in results.items():
        print(f"{name:<34}{rate:>10.1f} img/s")
    print(f"dali / synthetic: {results['dali'] / results['synthetic']:.1%} (H100 + AlexNet target: >= 95%)")
    print(f"dali / torchvision-style loop: {results['dali'] / results['reference']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
