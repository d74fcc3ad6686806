"""`alextrain`: train, evaluate and inspect AlexNet.

Only click and light modules are imported here: torch, DALI and webdataset are imported inside
the commands that use them, so `alextrain --help` answers at once. Options that mean the same
thing in several commands are defined once (`HELP` and the `*_option` decorators below), so
every --help reads the same way for the same thing.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from pipeline.augment import StatsError
from preprocess.cli import image_limit_options  # click only: --help stays fast
from shards import layout
from shards.reader import DatasetError
from trainer import fig1_stats  # torch-free: fig1's defaults
from trainer.config import TrainConfig, load_config_file
from trainer.errors import CheckpointError, FigureError, TrainError
from trainer.options import option, run_options

_USER_ERRORS = (
    DatasetError,
    layout.LayoutError,
    StatsError,
    CheckpointError,
    TrainError,
    FigureError,
    ValueError,
)


def _fail(message: str) -> None:
    click.echo(f"alextrain: error: {message}", err=True)
    sys.exit(2)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"alextrain: warning: {message}\n"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and evaluate the paper's AlexNet on shards written by `alexprep`.

    \b
    alextrain run --data OUT --out RUN      train (one device, --model-parallel 2, or torchrun)
    alextrain eval --data OUT --checkpoint RUN [--checkpoint RUN2 ...] [--ten-crop]
    alextrain summary [--arch alexnet|cifar]   layers, neurons, parameters
    alextrain bench-loader --data OUT       is the loader or the model the bottleneck?
    alextrain kernels|predict|neighbors RUN ...   the paper's Figures 3 and 4
    alextrain report RUN                    curves; the run beside Table 2 if ImageNet-1k
    alextrain demo OUT                      all of it, on images it draws (minutes, CPU)

    \b
    A checkpoint argument is a .pt file or a run folder (its best.pt, else last.pt).
    --json prints a command's result as JSON on stdout; --json-out PATH writes it to a file.
    """
    warnings.formatwarning = _one_line_warning
    from trainer.stopping import second_interrupt_exits  # no torch: --help stays fast

    second_interrupt_exits("alextrain")


# ---- options shared by several commands: one definition, one help text -------------------------

HELP = {
    "data": "Sharded dataset folder (alexprep shard, then alexprep pca-stats).",
    "checkpoint": "A checkpoint file, or a run folder (its best.pt, else last.pt).",
    "json": "Print the result as JSON on stdout (instead of the table).",
    "json_out": "Write the result as JSON to this file (parent folders are created).",
}


def data_option(required: bool = True) -> Callable:
    help_ = HELP["data"] + ("" if required else " [default: the one the checkpoint was trained on]")
    return click.option(
        "--data", required=required, type=click.Path(file_okay=False, path_type=Path), help=help_
    )


def checkpoint_argument(f: Callable) -> Callable:
    return click.argument("checkpoint", type=click.Path(path_type=Path))(f)


device_option = option("device")  # the same flag, default and help as `alextrain run`'s
num_threads_option = option("num_threads")
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Images per batch."
)


def json_options(f: Callable) -> Callable:
    """--json (print) and --json-out PATH (write): the same two flags on every command with a result."""
    f = click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), help=HELP["json_out"])(f)
    return click.option("--json", "as_json", is_flag=True, help=HELP["json"])(f)


IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what the figures can be saved as


def prepare_outputs(
    image: Path | None = None, data: Path | None = None, image_types: tuple[str, ...] = IMAGE_TYPES
) -> None:
    """Check a command's output files before any work, and make their folders.

    So a typo in --out fails in a second with one line, not with a traceback after an hour of
    feature extraction. `image` must end in one of `image_types`; `data` (JSON, Markdown) may
    be named anything.
    """
    for path in (image, data):
        if path is not None and path.is_dir():
            _fail(f"{path}: is a folder; give a file name")
    if image is not None and image.suffix.lower() not in image_types:
        _fail(f"{image}: unknown image type {image.suffix!r}; use one of {', '.join(image_types)}")
    for path in (image, data):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"{path}: cannot create its folder ({e.strerror or e})")
        if not os.access(path.parent, os.W_OK):
            _fail(f"{path}: folder {path.parent} is not writable")


def _note(message: str, as_json: bool) -> None:
    """Progress notes go to stderr when stdout carries JSON."""
    click.echo(message, err=as_json)


def emit(result: object, as_json: bool, json_out: Path | None, table: Callable[[], None]) -> None:
    """The result as a table (default) or JSON on stdout, and as a JSON file with --json-out."""
    text = json.dumps(result, indent=2) + "\n"
    if as_json:
        click.echo(text, nl=False)
    else:
        table()
    if json_out:
        try:
            layout.write_atomic(json_out, text.encode())
        except layout.LayoutError as e:  # a full disk, a read-only folder
            _fail(str(e))
        _note(f"wrote {json_out}", as_json)


@main.command("run")
@run_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON or TOML file of the same settings; flags override it.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last checkpoint; settings not given come from its "
    "config.json (a different one is refused, except --epochs, --data and a few others).",
)
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
        # only flags count as given: a config file (a run's config.json) may hold every key, the
        # defaults of options its arch lacks too, and is refused only where a value would matter
        given = {k for k, v in flags.items() if v is not None}
        values.update({k: flags[k] for k in given})
        if resume or auto_resume:  # what the user leaves out is what the run was started with
            from trainer.hosts import run_settings  # rank 0's, on hosts that do not share --out

            saved = run_settings(values.get("out"), _saved_settings)
            if resume and not saved and values.get("out") and not values.get("data"):
                raise TrainError(f"--resume: no such checkpoint: no run was started in {values['out']}")
            values = {**saved, **values}
        cfg = TrainConfig.from_flat(values)
        if not cfg.run.data or not cfg.run.out:
            raise TrainError("--data and --out are required (flags or config file)")
        rows = run(cfg, resume=resume, progress=not quiet, auto_resume=auto_resume, given=given)
    except _USER_ERRORS as e:
        _fail(str(e))
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 speaks for the run
    if rows:
        last = rows[-1]
        click.echo(
            f"done: epoch {last['epoch']}, train loss {last['train_loss']:.4f}"
            + (f", val top-1 err {last['val_top1_err']:.4f}" if "val_top1_err" in last else "")
            + f"; checkpoint {Path(cfg.run.out) / 'last.pt'}"
        )
    else:
        click.echo(f"nothing to do: {cfg.run.out} has finished its {cfg.optim.epochs} epochs")


def _saved_settings(out: str | None) -> dict:
    """The settings in OUT/config.json of the run to resume ({} when there is none yet)."""
    saved = Path(out) / "config.json" if out else None
    if saved is None or not saved.is_file():
        return {}
    return {k: v for k, v in load_config_file(saved).items() if k != "out"}


@main.command("eval")
@data_option()
@click.option(
    "--checkpoint",
    "checkpoints",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help=HELP["checkpoint"] + " Repeat to also evaluate the average of several (the paper's 5 CNNs).",
)
@click.option("--split", default=None, help="Split to evaluate [default: val, validation or test].")
@click.option("--ten-crop", is_flag=True, help="The paper's 10 patches, softmax averaged.")
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
    except _USER_ERRORS as e:
        _fail(str(e))

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


@main.command("summary")
@click.option("--arch", type=click.Choice(["alexnet", "cifar"]), default="alexnet", show_default=True)
@click.option(
    "--num-classes",
    type=click.IntRange(1, MAX_SUMMARY_CLASSES),
    default=None,
    help="[default: 1000 for alexnet, 10 for cifar]",
)
@click.option("--towers", type=click.IntRange(1, 2), default=2, show_default=True)
@click.option("--extra-conv", is_flag=True, help="A sixth conv layer (Table 2's 1 CNN*).")
@click.option("--crop", type=click.Choice(["224", "227"]), default="224", show_default=True)
@json_options
def summary_cmd(
    arch: str,
    num_classes: int | None,
    towers: int,
    extra_conv: bool,
    crop: str,
    as_json: bool,
    json_out: Path | None,
) -> None:
    """Each layer's output shape, neurons and parameters, and the totals."""
    prepare_outputs(data=json_out)

    from trainer.config import ModelConfig
    from trainer.model import build_model, summary

    size = 32 if arch == "cifar" else int(crop)
    cfg = ModelConfig(
        arch=arch,
        num_classes=num_classes or (10 if arch == "cifar" else 1000),
        towers=towers,
        extra_conv=extra_conv,
        crop=size,
    )
    model = build_model(cfg)
    rows = summary(model, size)
    total = {"neurons": sum(r.neurons for r in rows), "params": sum(p.numel() for p in model.parameters())}

    def table() -> None:
        click.echo(f"{'layer':<8}{'output':>18}{'neurons':>12}{'params':>14}")
        for r in rows:
            click.echo(f"{r.name:<8}{'x'.join(map(str, r.shape)):>18}{r.neurons:>12,}{r.params:>14,}")
        click.echo(f"{'total':<8}{'':>18}{total['neurons']:>12,}{total['params']:>14,}")

    emit({"layers": [r.__dict__ for r in rows], "total": total}, as_json, json_out, table)


@main.command("bench-loader")
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
    except _USER_ERRORS as e:
        _fail(str(e))
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


def _in_run_folder(checkpoint: Path, name: str, optional: bool = False) -> Path | None:
    """A figure's default path: `name` in the run folder (a checkpoint file's folder), not the
    current one. An `optional` figure (predict's, neighbors') is None without matplotlib or
    where the run folder cannot be written (the results are still printed)."""
    import importlib.util

    if optional and importlib.util.find_spec("matplotlib") is None:
        click.echo(
            "note: no figure: matplotlib is not installed (pip install 'alexnet2012[figures]')", err=True
        )
        return None
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if optional and folder.is_dir() and not os.access(folder, os.W_OK):
        click.echo(f"note: no figure: {folder} is not writable (pass --out to write one elsewhere)", err=True)
        return None
    return folder / name


@main.command("kernels")
@checkpoint_argument
@click.option(
    "--out", type=click.Path(path_type=Path), help="Image file [default: fig3.png in the run folder]."
)
@click.option(
    "--scale", type=click.IntRange(1, 32), help="Pixels per weight [default: ~44 px a kernel; 4 for 11x11]."
)
def kernels_cmd(checkpoint: Path, out: Path | None, scale: int | None) -> None:
    """Figure 3: the conv1 kernels as an image grid, titled, one labelled block per tower.

    CHECKPOINT is a checkpoint file, or a run folder (its best.pt, else last.pt).
    """
    out = out or _in_run_folder(checkpoint, "fig3.png")
    prepare_outputs(image=out, image_types=(".png", ".jpg", ".jpeg"))

    from trainer.checkpoint import load, resolve
    from trainer.figures import conv1_kernels, kernel_figure, save_image

    try:
        path = resolve(checkpoint)
        towers = conv1_kernels(load(path))
        shape = "x".join(map(str, towers[0].shape[1:]))
        img = kernel_figure(
            towers, f"Figure 3: conv1, {sum(map(len, towers))} kernels of {shape} ({path.name})", scale=scale
        )
        save_image(img, out)
    except _USER_ERRORS as e:
        _fail(str(e))
    click.echo(
        f"{sum(len(t) for t in towers)} kernels ({shape}) in {len(towers)} tower(s) -> {out} "
        f"({img.width}x{img.height})"
    )


@main.command("predict")
@checkpoint_argument
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@data_option(required=False)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Figure 4 (left) as an image (.png, .pdf, ...) [default: fig4.png in the run folder].",
)
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the paper's 10 patches.")
@device_option
@image_limit_options
@json_options
def predict_cmd(
    checkpoint: Path,
    images: tuple[Path, ...],
    data: Path | None,
    out: Path | None,
    ten_crop: bool,
    device: str,
    max_pixels: int,
    max_bytes: int,
    as_json: bool,
    json_out: Path | None,
) -> None:
    """Top-5 classes of each IMAGE with probabilities; the true class is marked (*) when the path
    names it (`n01440764_tench.JPEG`, or a class folder such as `.../cat/0000.jpg`).

    CHECKPOINT is a checkpoint file, or a run folder (its best.pt, else last.pt). Class names are
    the human-readable ones where known: classes.json's labels (shard with --synsets
    LOC_synset_mapping.txt, the devkit, or --label-from-name on `<wnid>_<name>` files), else
    DATA/class_names.json ({"n01440764": "tench", ...}), else the ILSVRC-2012 name of a wnid
    (a table shipped with the package), else the names image files give.
    """
    out = out or _in_run_folder(checkpoint, "fig4.png", optional=True)
    prepare_outputs(image=out, data=json_out)

    from trainer.figures import load_for_figures, plot_predictions, predict_images

    try:
        model, cfg, data, _ = load_for_figures(checkpoint, data, device)
        results, unnamed = predict_images(
            model,
            data,
            list(images),
            cfg["crop"],
            ten_crop,
            cfg["normalization"],
            limits=(max_pixels, max_bytes),
        )
        if out:
            plot_predictions(results, out)
    except _USER_ERRORS as e:
        _fail(str(e))

    def table() -> None:
        for r in results:
            truth = f"  (true: {r['true_name']}, p={r['true_prob']:.4f})" if r["true_name"] else ""
            click.echo(f"{r['image']}{truth}")
            for t in r["top"]:
                click.echo(f"  {t['prob']:8.4f}  {t['name']}{' *' if t['index'] == r['true_index'] else ''}")

    emit([{k: v for k, v in r.items() if k != "_rgb"} for r in results], as_json, json_out, table)
    if unnamed:
        _note(
            f"note: no human-readable name for {len(unnamed)} class(es) shown (e.g. index {unnamed[0]}); "
            f"shard with --synsets LOC_synset_mapping.txt or add {data}/class_names.json",
            True,
        )
    if out:
        _note(f"wrote {out}", as_json)


@main.command("neighbors")
@checkpoint_argument
@data_option(required=False)
@click.option(
    "--query",
    "queries",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="A query image; repeat for several.",
)
@click.option("--k", type=click.IntRange(1, 64), default=6, show_default=True, help="Neighbours per query.")
@click.option("--split", default="train", show_default=True, help="Split to search (the paper: train).")
@click.option(
    "--include-self",
    is_flag=True,
    help="Keep the query's own copy in the split (found at distance ~0) [default: left out].",
)
@click.option(
    "--chunk", type=click.IntRange(1), default=65536, show_default=True, help="Bank rows per block."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Figure 4 (right) as an image (.png, .pdf, ...) [default: fig4b.png in the run folder].",
)
@device_option
@batch_size_option
@num_threads_option
@image_limit_options
@json_options
def neighbors_cmd(
    checkpoint: Path,
    data: Path | None,
    queries: tuple[Path, ...],
    k: int,
    split: str,
    include_self: bool,
    chunk: int,
    out: Path | None,
    device: str,
    batch_size: int,
    num_threads: int,
    max_pixels: int,
    max_bytes: int,
    as_json: bool,
    json_out: Path | None,
) -> None:
    """Figure 4 (right): the images of a split (train unless --split) nearest each query in the
    last hidden layer, with their class and file; the query's own copy in the split is left out.

    CHECKPOINT is a checkpoint file, or a run folder (its best.pt, else last.pt). The split's
    features are extracted once and cached beside the checkpoint, keyed on its content
    (features-<name>-<split>-<hash>.npy: a checkpoint rewritten by a later epoch is re-extracted);
    the search runs in blocks of --chunk rows, so memory stays bounded. The model and the loader
    run on the one --device.
    """
    out = out or _in_run_folder(checkpoint, "fig4b.png", optional=True)
    prepare_outputs(image=out, data=json_out)

    from trainer.neighbors import find_neighbors, plot_neighbors

    try:
        result, query_rgb, data = find_neighbors(
            checkpoint,
            data,
            list(queries),
            k,
            split,
            chunk,
            device,
            batch_size,
            num_threads,
            (max_pixels, max_bytes),
            include_self,
            progress=not as_json,
        )
        if out:
            plot_neighbors(result, query_rgb, data, out)
    except _USER_ERRORS as e:
        _fail(str(e))

    def table() -> None:
        for r in result:
            left_out = (
                f"; its own copy (row {', '.join(map(str, r['excluded']))}) left out" if r["excluded"] else ""
            )
            click.echo(
                f"{r['query']} ({r['query_class'] or 'class unknown'}), nearest in {r['split']}{left_out}:"
            )
            for n in r["neighbors"]:
                click.echo(f"  {n['distance']:10.2f}  {n['name'][:24]:<24}  {n['source']}")

    emit(result, as_json, json_out, table)
    if out:
        _note(f"wrote {out}", as_json)


@main.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Markdown report [default: RUN/report.md].")
def report_cmd(run: Path, out: Path | None) -> None:
    """Curves (loss, top-1/top-5 error, lr per epoch) as PNG, and the run's last epoch, beside the
    paper's Table 2 when its data has the 1,000 ILSVRC-2012 classes (else the report says why not).

    RUN is a run folder (or a checkpoint in one). Its metrics.jsonl is read tolerantly: a torn
    or garbage line is skipped with a warning.
    """
    if out is not None and out.suffix.lower() == ".png":  # the figure is written to OUT's .png
        raise click.BadParameter(
            f"{out} would be both the Markdown report and its figure; give a .md name "
            "(the figure is written beside it, as the same name with .png)",
            param_hint="--out",
        )
    prepare_outputs(data=out)  # RUN/report.md (the default) needs no folder made

    from trainer.report import report

    run = run.parent if run.is_file() else run
    try:
        result = report(run, out or run / "report.md")
    except _USER_ERRORS as e:
        _fail(str(e))
    except OSError as e:  # e.g. a read-only run folder
        _fail(f"{e.filename or run}: {e.strerror or e}")
    click.echo(f"wrote {result['markdown']} and {result['png']} ({result['epochs']} epochs)")
    click.echo(result["why"])


@main.command("fig1")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="CIFAR-10 shards (--size 32).")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for the runs, JSON, Markdown and PNG.",
)
@click.option(
    "--nets",
    default=",".join(fig1_stats.DEFAULT_NETS),
    show_default=True,
    help="Comma-separated: relu, tanh (Figure 1); relu-lrn, tanh-lrn (with LRN); relu-scale, "
    "tanh-scale (LRN's constant gain alone: the control).",
)
@click.option(
    "--lrs",
    default=",".join(f"{lr:g}" for lr in fig1_stats.GRID),
    show_default=True,
    help="The lr grid each net is swept on (steps of at most sqrt(10); extended past an end that "
    "wins); one value: no sweep.",
)
@click.option(
    "--sweep-epochs",
    type=click.IntRange(1),
    default=fig1_stats.BUDGET_EPOCHS,
    show_default=True,
    help="Budget per sweep point: the lr that reaches 25% training error soonest within it wins "
    "(none or a tie: the lowest error at its end).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=fig1_stats.EPOCHS,
    show_default=True,
    help="Epochs per final run.",
)
@click.option(
    "--seeds",
    type=click.IntRange(1),
    default=fig1_stats.SEEDS,
    show_default=True,
    help="Final runs per net (seeds 1..N).",
)
@click.option("--crop", type=int, default=32, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None, help="Cap (quick runs).")
@click.option("--num-threads", type=click.IntRange(1), default=4, show_default=True)
@option("init")
@click.option("--quiet", is_flag=True, help="No progress bars (each run is still named).")
def fig1_cmd(
    data: Path,
    out: Path,
    nets: str,
    lrs: str,
    sweep_epochs: int,
    epochs: int,
    seeds: int,
    crop: int,
    steps_per_epoch: int | None,
    num_threads: int,
    init: str,
    quiet: bool,
) -> None:
    """Figure 1, settled (docs/figures.md): each net's lr swept by the caption's criterion, then
    several seeds per net; epochs to 25% training error with ranges, ratios, curves with bands."""
    from trainer.ablations import Plan, parse_list, run_figure1
    from trainer.fig1_report import lines

    try:
        base = TrainConfig.of(crop=crop, steps_per_epoch=steps_per_epoch, num_threads=num_threads, init=init)
        plan = Plan(
            parse_list(nets, "--nets"), parse_list(lrs, "--lrs", float), sweep_epochs, epochs, seeds, base
        )
        summary = run_figure1(plan, data, out, say=click.echo, progress=not quiet)
    except _USER_ERRORS as e:
        _fail(str(e))
    for line in lines(summary):
        click.echo(line)
    click.echo(f"wrote {out / 'ablation.json'}, {out / 'fig1.md'} and {out / 'fig1.png'}")


@main.command("demo")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def demo_cmd(out: Path) -> None:
    """The whole chain on a small image set it draws: shard, verify, pca-stats, run, eval,
    Figures 3 and 4, report (about a minute on 2 CPU cores; OUT/run holds the results)."""
    from trainer.demo import run_demo

    try:
        run_demo(out, echo=click.echo)
    except _USER_ERRORS as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
