"""`alextrain`: train, evaluate and inspect AlexNet."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import click

from pipeline.augment import LIGHTING_CONVENTIONS, NORMALIZATIONS, StatsError
from shards.reader import DatasetError
from trainer.checkpoint import CheckpointError
from trainer.config import TrainConfig, load_config_file
from trainer.train import TrainError

_USER_ERRORS = (DatasetError, StatsError, CheckpointError, TrainError, ValueError)


def _fail(message: str) -> None:
    click.echo(f"alextrain: error: {message}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate the paper's AlexNet on shards written by `alexprep`.

    \b
    alextrain run --data OUT --out RUN      train (one device, --model-parallel 2, or torchrun)
    alextrain eval --data OUT --checkpoint C [C2 ...] [--ten-crop]
    alextrain summary [--arch alexnet|cifar]   layers, neurons, parameters
    alextrain bench-loader --data OUT       is the loader or the model the bottleneck?
    """


_CHOICES = {
    "arch": ["alexnet", "cifar"],
    "activation": ["relu", "tanh"],
    "lrn": ["cuda-convnet", "paper", "off"],
    "pool": ["overlap", "nonoverlap"],
    "loader": ["auto", "dali", "reference"],
    "lighting": list(LIGHTING_CONVENTIONS),
    "normalization": list(NORMALIZATIONS),
    "device": ["auto", "cuda", "cpu"],
}
_HELP = {
    "data": "Sharded dataset (alexprep shard + pca-stats).",
    "out": "Run directory: checkpoints, metrics.jsonl, config.json.",
    "lrn": "cuda-convnet: torch LRN alpha=1e-4 (Krizhevsky's code); paper: the printed formula (5x).",
    "lighting": "PCA lighting convention (see pipeline/augment.py); off to disable.",
    "crop": "224 (conv1 padded by 2) or 227 (unpadded, Caffe).",
    "towers": "2: the paper's net; 1: one GPU with half the kernels (section 3.2's comparison).",
    "extra_conv": "A sixth conv layer (Table 2's 1 CNN*).",
    "steps_per_epoch": "Cap on steps per epoch (quick runs).",
    "model_parallel": "2: one tower per GPU, as in the paper.",
    "patience": "Epochs without val improvement before the lr is divided by 10.",
}


def _config_options(f):  # noqa: ANN001, ANN202
    """One flag per TrainConfig field, defaulting to None so a config file can set it."""
    for fl in reversed(fields(TrainConfig)):
        name = "--" + fl.name.replace("_", "-")
        help_ = _HELP.get(fl.name, "") + f" [default: {fl.default}]"
        if fl.type in ("bool",) or isinstance(fl.default, bool):
            f = click.option(f"{name}/--no-{name[2:]}", fl.name, default=None, help=help_)(f)
        elif fl.name in _CHOICES:
            f = click.option(name, fl.name, type=click.Choice(_CHOICES[fl.name]), default=None, help=help_)(f)
        else:
            kind = {int: int, float: float}.get(type(fl.default), str)
            if fl.name in ("num_classes", "steps_per_epoch"):
                kind = int
            f = click.option(name, fl.name, type=kind, default=None, help=help_)(f)
    return f


@main.command("run")
@_config_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON or TOML file of the same settings; flags override it.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option(
    "--auto-resume",
    is_flag=True,
    help="Resume if --out has a checkpoint, else start (for restart policies and schedulers).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(config_file: Path | None, resume: bool, auto_resume: bool, quiet: bool, **flags) -> None:
    """Train AlexNet with the paper's recipe (all values overridable)."""
    from trainer.train import run

    try:
        values = load_config_file(config_file) if config_file else {}
        values.update({k: v for k, v in flags.items() if v is not None})
        cfg = TrainConfig(**values)
        if not cfg.data or not cfg.out:
            raise TrainError("--data and --out are required (flags or config file)")
        if auto_resume:
            resume = (Path(cfg.out) / "last.pt").exists()
        rows = run(cfg, resume=resume, progress=not quiet)
    except _USER_ERRORS as e:
        _fail(str(e))
    if rows:
        last = rows[-1]
        click.echo(
            f"done: epoch {last['epoch']}, train loss {last['train_loss']:.4f}"
            + (f", val top-1 err {last['val_top1_err']:.4f}" if "val_top1_err" in last else "")
            + f"; checkpoint {Path(cfg.out) / 'last.pt'}"
        )


@main.command("eval")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Sharded dataset.")
@click.option(
    "--checkpoint",
    "checkpoints",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="A checkpoint; repeat to average several models.",
)
@click.argument("more", nargs=-1, type=click.Path(path_type=Path))
@click.option("--split", default=None, help="Split to evaluate [default: val, validation or test].")
@click.option("--ten-crop", is_flag=True, help="The paper's 10 patches, softmax averaged.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the results here.")
def eval_cmd(
    data: Path,
    checkpoints: tuple[Path, ...],
    more: tuple[Path, ...],
    split: str | None,
    ten_crop: bool,
    batch_size: int,
    device: str,
    json_out: Path | None,
) -> None:
    """Top-1/top-5 error of one checkpoint, or of the average of several (the paper's "5 CNNs")."""
    from trainer.inference import evaluate_checkpoints

    try:
        result = evaluate_checkpoints(data, [*checkpoints, *more], split, ten_crop, batch_size, device)
    except _USER_ERRORS as e:
        _fail(str(e))
    click.echo(f"{'model':<48}{'top-1 err':>10}{'top-5 err':>10}{'samples':>9}")
    for row in result["rows"]:
        click.echo(
            f"{row['model'][-48:]:<48}{row['top1_err']:>10.4f}{row['top5_err']:>10.4f}{row['samples']:>9}"
        )
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@main.command("summary")
@click.option("--arch", type=click.Choice(["alexnet", "cifar"]), default="alexnet", show_default=True)
@click.option("--num-classes", type=int, default=None, help="[default: 1000 for alexnet, 10 for cifar]")
@click.option("--towers", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--extra-conv", is_flag=True)
@click.option("--crop", type=click.Choice(["224", "227"]), default="224", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def summary_cmd(
    arch: str, num_classes: int | None, towers: int, extra_conv: bool, crop: str, as_json: bool
) -> None:
    """Each layer's output shape, neurons and parameters, and the totals."""
    from trainer.model import build_model, summary

    size = 32 if arch == "cifar" else int(crop)
    cfg = TrainConfig(
        arch=arch,
        num_classes=num_classes or (10 if arch == "cifar" else 1000),
        towers=towers,
        extra_conv=extra_conv,
        crop=size,
    )
    model = build_model(cfg.model_config())
    rows = summary(model, size)
    total = {"neurons": sum(r.neurons for r in rows), "params": sum(p.numel() for p in model.parameters())}
    if as_json:
        click.echo(json.dumps({"layers": [r.__dict__ for r in rows], "total": total}, indent=2))
        return
    click.echo(f"{'layer':<8}{'output':>18}{'neurons':>12}{'params':>14}")
    for r in rows:
        click.echo(f"{r.name:<8}{'x'.join(map(str, r.shape)):>18}{r.neurons:>12,}{r.params:>14,}")
    click.echo(f"{'total':<8}{'':>18}{total['neurons']:>12,}{total['params']:>14,}")


@main.command("bench-loader")
@click.option("--data", required=True, type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--loader", type=click.Choice(["dali", "reference"]), default="dali", show_default=True)
@click.option("--batches", type=click.IntRange(2), default=50, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--threads", type=int, default=4, show_default=True, help="DALI threads / DataLoader workers.")
@click.option("--json", "as_json", is_flag=True)
def bench_loader_cmd(
    data: Path, device: str, loader: str, batches: int, batch_size: int, threads: int, as_json: bool
) -> None:
    """Run the training pipeline alone (full paper augmentation) and print images/s."""
    import time

    from pipeline.loader import LoaderOptions, TrainLoader

    opt = LoaderOptions(batch_size=batch_size, device=device, backend=loader, num_threads=threads)
    try:
        train = TrainLoader(data, opt)
    except (*_USER_ERRORS, StatsError) as e:
        _fail(str(e))
    n, elapsed, epoch = 0, 0.0, 0
    while n < batches:
        it = train.epoch(epoch)
        next(it)  # pipeline start-up is not throughput
        start = time.perf_counter()
        for _ in it:
            n += 1
            if n == batches:
                break
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        elapsed += time.perf_counter() - start
        epoch += 1
    rate = n * batch_size / elapsed
    result = {"loader": loader, "device": device, "batch_size": batch_size, "batches": n, "img_per_s": rate}
    click.echo(
        json.dumps(result)
        if as_json
        else f"{loader} on {device}: {rate:.1f} img/s ({n} batches of {batch_size})"
    )


if __name__ == "__main__":
    main()
