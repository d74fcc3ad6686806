"""Does the paper's exact recipe train AlexNet? Loss over the first steps, two input scalings.

    python bench/paper_recipe_trains.py --data OUT [--steps 60] [--batch-size 64] [--json FILE]

Public PyTorch ports report the loss stuck at ln(1000) = 6.91 with the paper's SGD and init
(N(0, 0.01^2), biases 1) and switch to Adam. This runs the paper's recipe unchanged on real
ImageNet shards, feeding (a) the paper's input, raw 0-255 RGB minus the mean image, and (b) the
usual port's input, per-channel standardised (~unit variance, 1/60 of the paper's scale), and
prints the training loss and the std of the logits at initialisation for both. The shards must
be stored at >= 224px (the paper's crop; `alexprep shard` makes 256px by default).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import absolute, at_least, batch_fits, output, positive, refused  # noqa: E402
from pipeline.loader import CROP_SIZE, Feed, LoaderConfig, TrainLoader  # noqa: E402
from shards.reader import load_classes, load_dataset  # noqa: E402
from trainer.model import AlexNet, ModelConfig  # noqa: E402
from trainer.optim import PaperSGD, param_groups  # noqa: E402

NORMALIZATIONS = ("mean-image", "channel")  # the paper's input, the usual port's


def loader(data: Path, normalization: str, batch: int) -> TrainLoader:
    return TrainLoader(data, LoaderConfig(num_threads=2, normalization=normalization), Feed(batch_size=batch))


def run(data: Path, normalization: str, steps: int, batch: int, classes: int) -> dict:
    torch.manual_seed(0)
    model = AlexNet(ModelConfig(num_classes=classes))
    opt = PaperSGD(param_groups(model, 0.0005, False), lr=0.01)
    batches = loader(data, normalization, batch)
    losses, logit_std, epoch = [], None, 0
    while len(losses) < steps:
        for x, y in batches.epoch(epoch):
            logits = model(x)
            if logit_std is None:
                logit_std = logits.std().item()
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            print(f"{normalization:>10} step {len(losses):3d} loss {loss.item():.4f}", flush=True)
            if len(losses) == steps:
                break
        epoch += 1
    return {"normalization": normalization, "logit_std_at_init": logit_std, "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=absolute, required=True, help="shards at >= 224px, with pca-stats")
    ap.add_argument("--steps", type=at_least(10), default=60, help="per scaling (the first and last 5 shown)")
    ap.add_argument("--batch-size", type=positive, default=64)
    ap.add_argument("--json", type=output, help="write the losses here")
    args = ap.parse_args()
    with refused(ap, "--data "):
        meta, classes = load_dataset(args.data), len(load_classes(args.data))
    if meta["size"] < CROP_SIZE:
        ap.error(f"--data {args.data}: images stored at {meta['size']}px, the paper's crop is {CROP_SIZE}px")
    batch_fits(ap, args.data, meta, args.batch_size)
    with refused(ap):  # what else the loader refuses: fewer samples than a batch, no pca-stats, ...
        for normalization in NORMALIZATIONS:
            loader(args.data, normalization, args.batch_size)
    results = [run(args.data, n, args.steps, args.batch_size, classes) for n in NORMALIZATIONS]
    print(f"ln({classes}) = {math.log(classes):.4f}")
    for r in results:
        first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
        print(
            f"{r['normalization']:>10}: logit std at init {r['logit_std_at_init']:.4f}; "
            f"loss first 5 steps {first:.4f} -> last 5 {last:.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
