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
from dataclasses import fields
from pathlib import Path

import click

from pipeline.augment import StatsError
from preprocess.cli import image_limit_options  # click only: --help stays fast
from shards import layout
from shards.reader import DatasetError
from trainer.config import CHOICES, TrainConfig, load_config_file, parse_lr_steps
from trainer.errors import CheckpointError, FigureError, TrainError

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
    alextrain report RUN                    curves, and the run beside Table 2

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
    "device": "auto: CUDA when a GPU is visible, else the CPU.",
    "num_threads": "Loader threads (DALI CPU threads; the reference loader's DataLoader workers).",
    "batch_size": "Images per batch, per process (the global batch is this times the process count).",
    "checkpoint": "A checkpoint file, or a run folder (its best.pt, else last.pt).",
    "json": "Print the result as JSON on stdout (instead of the table).",
    "json_out": "Write the result as JSON to this file (parent folders are created).",
    "loader": "auto: DALI when installed, else the reference loader (webdataset + DataLoader).",
    "crop": "Crop size [default: 224, or the stored size when smaller (32 for CIFAR shards)].",
}
DEVICES = ["auto", "cuda", "cpu"]


def data_option(required: bool = True) -> Callable:
    help_ = HELP["data"] + ("" if required else " [default: the one the checkpoint was trained on]")
    return click.option(
        "--data", required=required, type=click.Path(file_okay=False, path_type=Path), help=help_
    )


def checkpoint_argument(f: Callable) -> Callable:
    return click.argument("checkpoint", type=click.Path(path_type=Path))(f)


device_option = click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=HELP["device"]
)
num_threads_option = click.option(
    "--num-threads", type=click.IntRange(1), default=4, show_default=True, help=HELP["num_threads"]
)
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(1), default=128, show_default=True, help=HELP["batch_size"]
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


_HELP = {
    "data": HELP["data"] + " Required.",
    "device": HELP["device"],
    "num_threads": HELP["num_threads"],
    "batch_size": HELP["batch_size"],
    "out": "Run directory: checkpoints, metrics.jsonl, config.json. Required.",
    "num_classes": "Must match the dataset [default: from its classes.json].",
    "lrn": "cuda-convnet: torch LRN alpha=1e-4 (Krizhevsky's code); paper: the printed formula (5x).",
    "lighting": "PCA lighting convention (see pipeline/augment.py); off to disable.",
    "crop": "alexnet: 224 (conv1 padded by 2) or 227 (Caffe) [default: 224; cifar: the stored size].",
    "towers": "2: the paper's net; 1: one GPU with half the kernels (section 3.2). alexnet only.",
    "dropout": "Dropout probability of fc6 and fc7 (section 4.2). alexnet only.",
    "extra_conv": "A sixth conv layer (Table 2's 1 CNN*). alexnet only.",
    "schedule": "plateau: lr/10 when val error stalls (the paper; needs a val split); step: at --lr-steps.",
    "lr_steps": "Epochs at which --schedule step divides the lr by 10, e.g. 30,60,80.",
    "patience": "Epochs without val improvement before the lr is divided by 10 (plateau).",
    "max_drops": "Most lr divisions (plateau).",
    "val_split": "[default: val, validation or test, whichever exists].",
    "steps_per_epoch": "Cap on steps per epoch (quick runs) [default: the whole split].",
    "checkpoint_every": "Also checkpoint every N steps (exact mid-epoch resume) [default: epoch ends only].",
    "keep": "Keep the newest N checkpoints as step-*.pt (last.pt is the newest; best.pt is kept too).",
    "verify_data": "Check the shards before training: quick (structure; hashes if never verified) or full.",
    "model_parallel": "2: one tower per GPU, as in the paper.",
    "dropout_mode": "paper: kept units unscaled in training, x0.5 at test (section 4.2); "
    "inverted: torch's nn.Dropout (x2 in training).",
    "init_from": "Fine-tune: start from this run folder's / checkpoint's weights (new classifier "
    "if the class count differs; new optimiser state).",
    "lighting_scale_div": "Divide the image by this after adding colour noise (cuda-convnet: 1.1; "
    "the paper: 1, not mentioned).",
    "mirror": "Random horizontal reflections in training (section 4.1).",
    "init": "paper: weights N(0, 0.01^2) (section 5); cuda-convnet: conv1 at 1e-4, the rest 0.01 "
    "(layers-18pct, Krizhevsky's CIFAR-10 net). cifar only.",
    "arch": "alexnet: the paper's net (section 3); cifar: Figure 1's four-layer net for 32x32 images.",
    "activation": "relu (section 3.1) or tanh (Figure 1's comparison).",
    "pool": "overlap: 3x3 windows, stride 2 (section 3.4); nonoverlap: 2x2, stride 2.",
    "decay_biases": "Also apply weight decay to biases (the paper's update decays weights only).",
    "lr": "Learning rate (section 5: 0.01); not rescaled with the global batch.",
    "momentum": "SGD momentum (section 5).",
    "weight_decay": "L2 weight decay (section 5).",
    "epochs": "Epochs in all (section 5: roughly 90); raise it to extend a run with --resume.",
    "train_split": "Split to train on.",
    "mmap": "DALI reads the shards memory-mapped (fastest on a local disk); --no-mmap: plain file "
    "reads (network filesystems; a shard truncated under a mapped reader kills it with SIGBUS).",
    "loader": "dali (the pipeline, CPU or GPU), reference (webdataset + torch), auto: dali if installed.",
    "normalization": "mean-image: subtract the training set's mean image (section 2); "
    "channel: per-channel mean and std (torchvision style).",
    "seed": "Seeds the init, the data order and every random augmentation (resume is exact).",
    "amp": "bf16 autocast on CUDA (LRN kept in float32); --no-amp: float32 throughout. CPU: float32.",
    "channels_last": "NHWC memory layout on CUDA (faster convolutions); no effect on the CPU.",
    "compile": "torch.compile the model (same outputs and gradients as eager; slower start).",
}


class _EpochList(click.ParamType):
    name = "EPOCHS"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        try:
            return parse_lr_steps(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _config_options(f):  # noqa: ANN001, ANN202
    """One flag per TrainConfig field, defaulting to None so a config file can set it."""
    for fl in reversed(fields(TrainConfig)):
        name = "--" + fl.name.replace("_", "-")
        help_ = _HELP.get(fl.name, "")
        if fl.default not in (None, "") and "[default:" not in help_:
            help_ += f" [default: {fl.default}]"
        if fl.type in ("bool",) or isinstance(fl.default, bool):
            f = click.option(f"{name}/--no-{name[2:]}", fl.name, default=None, help=help_)(f)
        elif fl.name in CHOICES:
            f = click.option(name, fl.name, type=click.Choice(CHOICES[fl.name]), default=None, help=help_)(f)
        elif fl.name == "lr_steps":
            f = click.option(name, fl.name, type=_EpochList(), default=None, help=help_)(f)
        else:
            kind = {"int": int, "float": float}.get(str(fl.type).split(" ")[0], str)
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
            saved = _saved_settings(values.get("out"))
            if resume and not saved and values.get("out") and not values.get("data"):
                raise TrainError(f"--resume: no such checkpoint: no run was started in {values['out']}")
            values = {**saved, **values}
        cfg = TrainConfig(**values)
        if not cfg.data or not cfg.out:
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
            + f"; checkpoint {Path(cfg.out) / 'last.pt'}"
        )
    else:
        click.echo(f"nothing to do: {cfg.out} has finished its {cfg.epochs} epochs")


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
            data, list(checkpoints), split, ten_crop, batch_size, device, num_threads
        )
    except _USER_ERRORS as e:
        _fail(str(e))

    def table() -> None:
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

    def table() -> None:
        click.echo(f"{'layer':<8}{'output':>18}{'neurons':>12}{'params':>14}")
        for r in rows:
            click.echo(f"{r.name:<8}{'x'.join(map(str, r.shape)):>18}{r.neurons:>12,}{r.params:>14,}")
        click.echo(f"{'total':<8}{'':>18}{total['neurons']:>12,}{total['params']:>14,}")

    emit({"layers": [r.__dict__ for r in rows], "total": total}, as_json, json_out, table)


@main.command("bench-loader")
@data_option()
@device_option
@click.option(
    "--loader",
    type=click.Choice(["auto", "dali", "reference"]),
    default="auto",
    show_default=True,
    help=HELP["loader"],
)
@click.option("--crop", type=click.IntRange(1), default=None, help=HELP["crop"])
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

    from pipeline.augment import CROP_SIZE
    from pipeline.loader import TrainLoader
    from shards.reader import load_dataset
    from trainer.inference import pick_device
    from trainer.train import Env, loader_options

    try:
        size = load_dataset(data)["size"]
        dev = pick_device(device)
        cfg = TrainConfig(loader=loader, num_threads=num_threads, crop=crop or min(CROP_SIZE, size))
        opt = loader_options(cfg, Env(0, 1, 0, [dev]), batch_size)
        train = TrainLoader(data, opt)
    except _USER_ERRORS as e:
        _fail(str(e))
    from pipeline.bench import measure

    m = measure(train, batches, warmup=5)
    n, rate = m["batches"], m["img_per_s"]
    result = {
        "loader": opt.backend,
        "device": dev.type,
        "crop": opt.crop,
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
            f"{opt.backend} on {dev.type}: {rate:.1f} img/s ({n} batches of {batch_size}, crop {opt.crop})"
        ),
    )


def _load_for_figures(checkpoint: Path, data: Path | None, device: str = "cpu"):  # noqa: ANN202
    """(model, config, data folder, checkpoint file): the model of a checkpoint or run folder on
    the device asked for, and the data from --data or the checkpoint's config."""
    from shards.reader import load_classes, load_dataset
    from trainer.checkpoint import resolve
    from trainer.inference import load_model, pick_device
    from trainer.model import ModelConfig

    checkpoint = resolve(checkpoint)
    model, state = load_model(checkpoint, pick_device(device))
    cfg = state["config"]
    if data is None and not isinstance(cfg.get("data"), str):
        raise CheckpointError(f"{checkpoint}: names no dataset; pass --data OUT")
    data = data or Path(cfg["data"])
    if not (data / layout.DATASET_JSON).is_file():
        raise DatasetError(
            f"{data}: not a sharded dataset; pass --data OUT (the shards the model was trained on)"
        )
    load_dataset(data)
    classes = load_classes(data)
    made_for = ModelConfig.from_dict(state["model_config"]).num_classes  # load_model checked it
    if len(classes) != made_for:
        raise CheckpointError(f"{checkpoint}: made for {made_for} classes, {data} has {len(classes)}")
    return model, cfg, data, checkpoint


@main.command("kernels")
@checkpoint_argument
@click.option("--out", type=click.Path(path_type=Path), default=Path("fig3.png"), show_default=True)
@click.option("--scale", type=click.IntRange(1, 32), default=4, show_default=True, help="Pixels per weight.")
def kernels_cmd(checkpoint: Path, out: Path, scale: int) -> None:
    """Figure 3: the conv1 kernels as an image grid, one row block per tower.

    CHECKPOINT is a checkpoint file, or a run folder (its best.pt, else last.pt).
    """
    prepare_outputs(image=out, image_types=(".png", ".jpg", ".jpeg"))

    from trainer.checkpoint import load, resolve
    from trainer.figures import conv1_kernels, kernel_grid, save_image

    try:
        towers = conv1_kernels(load(resolve(checkpoint)))
        img = kernel_grid(towers, scale=scale)
        save_image(img, out)
    except _USER_ERRORS as e:
        _fail(str(e))
    shape = "x".join(map(str, towers[0].shape[1:]))
    click.echo(
        f"{sum(len(t) for t in towers)} kernels ({shape}) in {len(towers)} tower(s) -> {out} "
        f"({img.width}x{img.height})"
    )


@main.command("predict")
@checkpoint_argument
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@data_option(required=False)
@click.option("--out", type=click.Path(path_type=Path), help="Figure 4 (left) as an image (.png, .pdf, ...).")
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
    DATA/class_names.json ({"n01440764": "tench", ...}), else the names image files give.
    """
    prepare_outputs(image=out, data=json_out)

    from trainer.figures import plot_predictions, predict_images

    try:
        model, cfg, data, _ = _load_for_figures(checkpoint, data, device)
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
@click.option("--split", default="train", show_default=True, help="Split to search.")
@click.option(
    "--chunk", type=click.IntRange(1), default=65536, show_default=True, help="Bank rows per block."
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Figure 4 (right) as an image (.png, .pdf, ...)."
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
    """Figure 4 (right): the training images nearest each query in the 4096-d last hidden layer.

    CHECKPOINT is a checkpoint file, or a run folder (its best.pt, else last.pt). The split's
    features are extracted once and cached beside the checkpoint, keyed on its content
    (features-<name>-<split>-<hash>.npy: a checkpoint rewritten by a later epoch is re-extracted);
    the search runs in blocks of --chunk rows, so memory stays bounded. The model and the loader
    run on the one --device.
    """
    prepare_outputs(image=out, data=json_out)

    import numpy as np
    import torch

    from pipeline.augment import load_stats
    from trainer.figures import (
        check_query_memory,
        chunked_topk,
        extract_features,
        feature_cache,
        load_image,
        plot_neighbors,
        train_images,
    )

    try:
        model, cfg, data, checkpoint = _load_for_figures(checkpoint, data, device)
        stats = load_stats(data)
        size = layout.read_json(data / layout.DATASET_JSON)["size"]
        norm = cfg["normalization"]
        loaded = [
            load_image(q, stats, cfg["crop"], False, size, norm, (max_pixels, max_bytes)) for q in queries
        ]  # bad ones fail first
        dev = next(model.parameters()).device
        cache = feature_cache(checkpoint, split)
        bank = extract_features(
            model, data, split, cfg["crop"], cfg["normalization"], cache, batch_size, not as_json, num_threads
        )
        check_query_memory(len(queries), bank.shape[1], chunk)
        with torch.no_grad():
            model.eval()
            q = torch.cat([torch.cat(model.features(x.to(dev)), 1) for _, x in loaded]).float()
        chunks = ((o, torch.from_numpy(np.array(bank[o : o + chunk]))) for o in range(0, len(bank), chunk))
        dist, idx = chunked_topk(q, chunks, k)
        result = [
            {"query": str(p), "neighbors": idx[i].tolist(), "distances": dist[i].tolist()}
            for i, p in enumerate(queries)
        ]
        if out:
            plot_neighbors(
                [rgb for rgb, _ in loaded], [train_images(data, r["neighbors"], split) for r in result], out
            )
    except _USER_ERRORS as e:
        _fail(str(e))

    def table() -> None:
        for r in result:
            pairs = zip(r["neighbors"], r["distances"], strict=True)
            click.echo(f"{r['query']}: " + ", ".join(f"{n} ({d:.1f})" for n, d in pairs))

    emit(result, as_json, json_out, table)
    if out:
        _note(f"wrote {out}", as_json)


@main.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Markdown report [default: RUN/report.md].")
def report_cmd(run: Path, out: Path | None) -> None:
    """Curves (loss, top-1/top-5 error, lr per epoch) as PNG, and this run beside the paper's Table 2.

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

    from trainer.figures import report

    run = run.parent if run.is_file() else run
    try:
        result = report(run, out or run / "report.md")
    except _USER_ERRORS as e:
        _fail(str(e))
    except OSError as e:  # e.g. a read-only run folder
        _fail(f"{e.filename or run}: {e.strerror or e}")
    click.echo(f"wrote {result['markdown']} and {result['png']} ({result['epochs']} epochs)")


@main.command("fig1")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="CIFAR-10 shards (--size 32).")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Folder for the runs, JSON and PNG."
)
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True, help="Epochs per net.")
@click.option(
    "--tanh-epochs",
    type=click.IntRange(1),
    default=None,
    help="Cap for the tanh nets [default: --epochs]; a ratio is then a lower bound if tanh is short.",
)
@click.option(
    "--variants",
    default="relu,tanh",
    show_default=True,
    help="Comma-separated: relu, tanh (Figure 1); relu-lrn, tanh-lrn (the LRN ablation: each vs its "
    "net, and the two as a Figure 1 pair with LRN).",
)
@click.option(
    "--lrs",
    default="0.003,0.01,0.03",  # trainer.ablations.SWEEP_LRS (not imported: start-up time)
    show_default=True,
    help="Learning rates to sweep per net (the paper tuned each net's), extended x3 past an end "
    "where the best lies; one value: no sweep.",
)
@click.option(
    "--sweep-steps",
    type=click.IntRange(1),
    default=None,
    help="Steps per sweep epoch [default: the whole epoch, as in docs/figures.md].",
)
@click.option(
    "--sweep-epochs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Epochs per sweep run, judged on the last: 1 finds the lr that starts fastest; more find "
    "the one that keeps going (docs/figures.md: tanh's best lr after 1 epoch is not its fastest to 25%).",
)
@click.option("--crop", type=int, default=32, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None, help="Cap (quick runs).")
@click.option("--num-threads", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--init",
    type=click.Choice(CHOICES["init"]),
    default="paper",
    show_default=True,
    help="Weight init: paper (N(0, 0.01^2), section 5) or cuda-convnet (conv1 at 1e-4: layers-18pct).",
)
@click.option("--quiet", is_flag=True)
def fig1_cmd(
    data: Path,
    out: Path,
    epochs: int,
    tanh_epochs: int | None,
    variants: str,
    lrs: str,
    sweep_steps: int | None,
    sweep_epochs: int,
    crop: int,
    steps_per_epoch: int | None,
    num_threads: int,
    init: str,
    quiet: bool,
) -> None:
    """Figure 1 under the paper's conditions (ReLU vs tanh, each net's lr swept, no regularisation:
    epochs to 25% training error), and optionally the LRN ablation, on CIFAR-10."""
    from trainer.ablations import VARIANTS, SweepLength, ratio_lines, run_figure1, sweep_span

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        _fail(f"--variants: unknown or none {unknown}; choose from {sorted(VARIANTS)}")
    try:
        rates = [float(v) for v in lrs.split(",") if v.strip()]
    except ValueError:
        _fail(f"--lrs: {lrs!r} is not a comma-separated list of numbers")
    if not rates or any(not (0 < r < 10) for r in rates):
        _fail(f"--lrs: {lrs!r}: each learning rate must be in (0, 10)")
    per_net = {n: (tanh_epochs or epochs) if n.startswith("tanh") else epochs for n in names}
    base = TrainConfig(crop=crop, steps_per_epoch=steps_per_epoch, num_threads=num_threads, init=init)
    try:
        length = SweepLength(sweep_steps, sweep_epochs)
        summary = run_figure1(data, out, per_net, base, names, rates, length, progress=not quiet)
    except _USER_ERRORS as e:
        _fail(str(e))
    for net, s in summary["sweep"]["nets"].items():
        table = ", ".join(
            f"{r['lr']:g}: {'diverged' if r['diverged'] else format(r['train_top1_err'], '.3f')}"
            for r in s["rows"]
        )
        click.echo(f"sweep {net:<5} train err after {sweep_span(s['rows'][0])}: {table} -> lr {s['best_lr']}")
    for name, r in summary["variants"].items():
        if not r.get("train_error"):
            click.echo(f"{name:<9} {r.get('note', 'no epochs')}")
            continue
        n = len(r["train_error"])
        to25, to50 = (r[f"epochs_to_{p}pct_train_error"] or f"not within {n}" for p in ("25", "50"))
        click.echo(
            f"{name:<9} lr {r['lr']:g}  train err {r['train_error'][-1]:.4f}  "
            f"test err {r['test_error'][-1]:.4f}  "
            f"epochs to 25% train err: {to25}; to 50%: {to50}"
        )
    for line in ratio_lines(summary):
        click.echo(line)
    click.echo(f"wrote {out / 'ablation.json'} and {out / 'fig1.png'}")


if __name__ == "__main__":
    main()
