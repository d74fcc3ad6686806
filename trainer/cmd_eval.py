"""`alextrain eval`, `summary` and `bench-loader`: numbers about a model or a loader."""

from __future__ import annotations

from pathlib import Path

import click

from preprocess.cli import UserPath
from trainer.cli_common import (
    HELP,
    USER_ERRORS,
    batch_size_option,
    data_option,
    device_option,
    emit,
    fail,
    json_options,
    num_threads_option,
    prepare_outputs,
    ten_crop_option,
)
from trainer.options import option


@click.command("eval")
@data_option()
@click.option(
    "--checkpoint",
    "checkpoints",
    required=True,
    multiple=True,
    type=UserPath(path_type=Path),
    help=HELP["checkpoint"] + " Repeat to also evaluate the average of several (the paper's 5 CNNs).",
)
@click.option("--split", default=None, help="Split to evaluate [default: val, validation or test].")
@ten_crop_option
@batch_size_option
@device_option
@num_threads_option
@json_options
def eval_cmd(
    data: Path,
    checkpoints: tuple[Path, ...],
    split: str | None,
    ten_crop: bool,
    batch_size: int,
    device: str,
    num_threads: int,
    as_json: bool,
    json_out: Path | None,
) -> None:
    """Top-1/top-5 error of one checkpoint, or of each of several and of their average.

    Averaging the softmax of several models is the paper's "5 CNNs" (section 6):
    `--checkpoint runs/a --checkpoint runs/b ...`.
    """
    prepare_outputs(data=json_out)

    from trainer.inference import evaluate_checkpoints

    try:
        result = evaluate_checkpoints(
            data, list(checkpoints), split, ten_crop, batch_size, device, num_threads, progress=not as_json
        )
    except USER_ERRORS as e:
        fail(str(e))

    def table() -> None:
        crops = "ten-crop (the paper's 10 patches, softmax averaged)" if ten_crop else "centre crop"
        click.echo(f"split {result['split']!r} of {data}, {crops}:")
        click.echo(f"{'model':<48}{'top-1 err':>10}{'top-5 err':>10}{'samples':>9}")
        for row in result["rows"]:
            click.echo(
                f"{row['model'][-48:]:<48}{row['top1_err']:>10.4f}{row['top5_err']:>10.4f}{row['samples']:>9}"
            )

    emit(result, as_json, json_out, table)


MAX_SUMMARY_CLASSES = 100_000  # the model is built to count it: fc8 alone is 4097 x N floats


@click.command("summary")
@option("arch")
@option("num_classes", none_default=True)
@option("towers")
@option("extra_conv")
@option("crop", none_default=True)
@json_options
def summary_cmd(
    arch: str,
    num_classes: int | None,
    towers: int,
    extra_conv: bool,
    crop: int | None,
    as_json: bool,
    json_out: Path | None,
) -> None:
    """Each layer's output shape, neurons and parameters, and the totals."""
    prepare_outputs(data=json_out)

    from dataclasses import replace

    from pipeline.config import ConfigError
    from trainer.config import TrainConfig
    from trainer.model import build_model, summary

    try:  # run's rules: a setting the arch ignores (cifar --towers 1) is refused, not dropped
        flat = dict(arch=arch, towers=towers, extra_conv=extra_conv, crop=crop, num_classes=num_classes)
        checked = TrainConfig.of(**flat)
        ctx = click.get_current_context()
        given = {k for k in flat if ctx.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE}
        checked.check(given)  # as run does: a given --towers 2 on cifar is refused, not ignored
    except ConfigError as e:
        fail(str(e))
    if (num_classes or 0) > MAX_SUMMARY_CLASSES:
        fail(f"--num-classes {num_classes}: more than {MAX_SUMMARY_CLASSES:,} (fc8 alone is 4097 x N floats)")
    m = checked.model
    cfg = replace(m, num_classes=num_classes or (10 if arch == "cifar" else 1000), crop=m.input_size)
    size = m.input_size
    model = build_model(cfg)
    rows = summary(model, size)
    total = {"neurons": sum(r.neurons for r in rows), "params": sum(p.numel() for p in model.parameters())}

    def table() -> None:
        click.echo(f"{'layer':<8}{'output':>18}{'neurons':>12}{'params':>14}")
        for r in rows:
            click.echo(f"{r.name:<8}{'x'.join(map(str, r.shape)):>18}{r.neurons:>12,}{r.params:>14,}")
        click.echo(f"{'total':<8}{'':>18}{total['neurons']:>12,}{total['params']:>14,}")

    emit({"layers": [r.__dict__ for r in rows], "total": total}, as_json, json_out, table)


@click.command("bench-loader")
@data_option()
@device_option
@option("loader")
@option("crop")
@click.option("--batches", type=click.IntRange(2), default=50, show_default=True, help="Batches to time.")
@batch_size_option
@num_threads_option
@json_options
def bench_loader_cmd(
    data: Path,
    device: str,
    loader: str,
    crop: int | None,
    batches: int,
    batch_size: int,
    num_threads: int,
    as_json: bool,
    json_out: Path | None,
) -> None:
    """Run the training pipeline alone (full paper augmentation) and print images/s.

    Steady state: one stream of batches across epochs, 5 warm-up batches untimed, then
    --batches timed (pipeline/bench.py's `measure`, the same as bench/loader_throughput.py).
    """
    prepare_outputs(data=json_out)

    from pipeline.loader import Feed, LoaderConfig, TrainLoader
    from preprocess.paper import CROP_SIZE
    from shards.reader import load_dataset
    from trainer.inference import pick_device

    try:
        size = load_dataset(data)["size"]
        dev = pick_device(device)
        crop = crop or min(CROP_SIZE, size)
        train = TrainLoader(
            data,
            LoaderConfig(backend=loader, num_threads=num_threads),
            Feed(batch_size=batch_size, crop=crop, device=dev.type, rank=0, world=1),
        )
    except USER_ERRORS as e:
        fail(str(e))
    from pipeline.bench import measure

    m = measure(train, batches, warmup=5)
    n, rate = m["batches"], m["img_per_s"]
    backend = train.s.backend
    result = {
        "loader": backend,
        "device": dev.type,
        "crop": crop,
        "batch_size": batch_size,
        "num_threads": num_threads,
        "batches": n,
        "img_per_s": rate,
    }
    emit(
        result,
        as_json,
        json_out,
        lambda: click.echo(
            f"{backend} on {dev.type}: {rate:.1f} img/s ({n} batches of {batch_size}, crop {crop})"
        ),
    )
