"""`alextrain`: train, evaluate and inspect AlexNet."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import click
import numpy as np

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
    "dropout_mode": ["paper", "inverted"],
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
    "dropout_mode": "paper: kept units unscaled in training, x0.5 at test (section 4.2); "
    "inverted: torch's nn.Dropout (x2 in training).",
    "init_from": "Fine-tune: start from this run folder's / checkpoint's weights (new classifier "
    "if the class count differs; new optimiser state).",
    "mirror": "Random horizontal reflections in training (section 4.1).",
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


def _load_for_figures(checkpoint: Path, data: Path | None):  # noqa: ANN202
    """(model, config, data folder): the model from a checkpoint, data from --data or its config."""
    import torch

    from trainer.inference import load_model

    model, state = load_model(checkpoint, torch.device("cpu"))
    cfg = state["config"]
    data = data or Path(cfg["data"])
    classes = json.loads((data / "classes.json").read_text()) if (data / "classes.json").is_file() else None
    if classes is None:
        raise TrainError(f"{data}: no classes.json; pass --data OUT (the shards the model was trained on)")
    if len(classes) != state["model_config"]["num_classes"]:
        raise CheckpointError(
            f"{checkpoint}: made for {state['model_config']['num_classes']} classes, "
            f"{data} has {len(classes)}"
        )
    return model, cfg, data


@main.command("kernels")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("fig3.png"), show_default=True)
@click.option("--scale", type=click.IntRange(1, 32), default=4, show_default=True, help="Pixels per weight.")
def kernels_cmd(checkpoint: Path, out: Path, scale: int) -> None:
    """Figure 3: the conv1 kernels as an image grid, one row block per tower."""
    from trainer.checkpoint import load
    from trainer.figures import FigureError, conv1_kernels, kernel_grid

    try:
        towers = conv1_kernels(load(checkpoint))
    except (*_USER_ERRORS, FigureError) as e:
        _fail(str(e))
    img = kernel_grid(towers, scale=scale)
    img.save(out)
    shape = "x".join(map(str, towers[0].shape[1:]))
    click.echo(
        f"{sum(len(t) for t in towers)} kernels ({shape}) in {len(towers)} tower(s) -> {out} "
        f"({img.width}x{img.height})"
    )


@main.command("predict")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--data", type=click.Path(path_type=Path), help="Shards it was trained on [default: from the checkpoint]."
)
@click.option("--out", type=click.Path(path_type=Path), help="Figure 4 (left) as PNG.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the predictions as JSON.")
@click.option("--ten-crop", is_flag=True, help="Average the softmax over the paper's 10 patches.")
def predict_cmd(
    checkpoint: Path,
    images: tuple[Path, ...],
    data: Path | None,
    out: Path | None,
    json_out: Path | None,
    ten_crop: bool,
) -> None:
    """Top-5 classes of each IMAGE with probabilities (true label marked when the name has a wnid)."""
    from trainer.figures import FigureError, plot_predictions, predict_images

    try:
        model, cfg, data = _load_for_figures(checkpoint, data)
        results = predict_images(model, data, list(images), cfg["crop"], ten_crop)
    except (*_USER_ERRORS, FigureError) as e:
        _fail(str(e))
    for r in results:
        click.echo(
            f"{r['image']}"
            + (f"  (true: {r['true_name']}, p={r['true_prob']:.4f})" if r["true_name"] else "")
        )
        for t in r["top"]:
            mark = " *" if t["index"] == r["true_index"] else ""
            click.echo(f"  {t['prob']:8.4f}  {t['name']}{mark}")
    if out:
        plot_predictions(results, out)
        click.echo(f"wrote {out}")
    if json_out:
        json_out.write_text(
            json.dumps([{k: v for k, v in r.items() if k != "_rgb"} for r in results], indent=2)
        )
        click.echo(f"wrote {json_out}")


@main.command("neighbors")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Shards [default: from the checkpoint].")
@click.option(
    "--query",
    "queries",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="A query image; repeat for several.",
)
@click.option("--k", type=click.IntRange(1, 64), default=6, show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option(
    "--chunk", type=click.IntRange(1), default=65536, show_default=True, help="Bank rows per block."
)
@click.option("--out", type=click.Path(path_type=Path), help="Figure 4 (right) as PNG.")
@click.option("--json", "json_out", type=click.Path(path_type=Path))
def neighbors_cmd(
    checkpoint: Path,
    data: Path | None,
    queries: tuple[Path, ...],
    k: int,
    split: str,
    chunk: int,
    out: Path | None,
    json_out: Path | None,
) -> None:
    """Figure 4 (right): the training images nearest each query in the 4096-d last hidden layer.

    The split's features are extracted once and cached beside the checkpoint
    (features-<split>.npy); the search runs in blocks of --chunk rows, so memory stays bounded.
    """
    import torch

    from pipeline.augment import load_stats
    from trainer.figures import (
        FigureError,
        check_query_memory,
        chunked_topk,
        extract_features,
        load_image,
        plot_neighbors,
        train_images,
    )

    try:
        model, cfg, data = _load_for_figures(checkpoint, data)
        stats = load_stats(data)
        cache = checkpoint.parent / f"features-{checkpoint.stem}-{split}.npy"
        bank = extract_features(model, data, split, cfg["crop"], cfg["normalization"], cache)
        check_query_memory(len(queries), bank.shape[1], chunk)
        size = json.loads((data / "dataset.json").read_text())["size"]
        loaded = [load_image(q, stats, cfg["crop"], False, size) for q in queries]
        with torch.no_grad():
            model.eval()
            q = torch.cat([torch.cat(model.features(x), 1) for _, x in loaded]).float()
        chunks = ((o, torch.from_numpy(np.array(bank[o : o + chunk]))) for o in range(0, len(bank), chunk))
        dist, idx = chunked_topk(q, chunks, k)
    except (*_USER_ERRORS, FigureError) as e:
        _fail(str(e))
    result = [
        {"query": str(p), "neighbors": idx[i].tolist(), "distances": dist[i].tolist()}
        for i, p in enumerate(queries)
    ]
    for r in result:
        click.echo(
            f"{r['query']}: "
            + ", ".join(f"{n} ({d:.1f})" for n, d in zip(r["neighbors"], r["distances"], strict=True))
        )
    if out:
        plot_neighbors(
            [rgb for rgb, _ in loaded], [train_images(data, r["neighbors"], split) for r in result], out
        )
        click.echo(f"wrote {out}")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
        click.echo(f"wrote {json_out}")


@main.command("report")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Markdown report [default: RUN/report.md].")
def report_cmd(run: Path, out: Path | None) -> None:
    """Curves (loss, top-1/top-5 error, lr per epoch) as PNG, and this run beside the paper's Table 2."""
    from trainer.figures import FigureError, report

    try:
        result = report(run, out or run / "report.md")
    except FigureError as e:
        _fail(str(e))
    click.echo(f"wrote {result['markdown']} and {result['png']}")


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
    help="Cap for the tanh net [default: --epochs]; a ratio is then a lower bound if tanh is short.",
)
@click.option(
    "--variants",
    default="relu,tanh",
    show_default=True,
    help="Comma-separated: relu, tanh (Figure 1), relu-lrn (the LRN ablation, vs relu).",
)
@click.option(
    "--lrs",
    default="0.003,0.01,0.03",  # trainer.ablations.SWEEP_LRS (not imported: start-up time)
    show_default=True,
    help="Learning rates to sweep per net (the paper tuned each net's), extended x3 past an end "
    "where the best lies; one value: no sweep.",
)
@click.option(
    "--sweep-steps", type=click.IntRange(1), default=150, show_default=True, help="Steps per sweep run."
)
@click.option("--crop", type=int, default=32, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None, help="Cap (quick runs).")
@click.option("--num-threads", type=click.IntRange(1), default=4, show_default=True)
@click.option("--quiet", is_flag=True)
def fig1_cmd(
    data: Path,
    out: Path,
    epochs: int,
    tanh_epochs: int | None,
    variants: str,
    lrs: str,
    sweep_steps: int,
    crop: int,
    steps_per_epoch: int | None,
    num_threads: int,
    quiet: bool,
) -> None:
    """Figure 1 under the paper's conditions (ReLU vs tanh, each net's lr swept, no regularisation:
    epochs to 25% training error), and optionally the LRN ablation, on CIFAR-10."""
    from trainer.ablations import PAPER_RATIO, VARIANTS, run_figure1

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
    per_net = {n: (tanh_epochs or epochs) if n == "tanh" else epochs for n in names}
    base = TrainConfig(crop=crop, steps_per_epoch=steps_per_epoch, num_threads=num_threads)
    try:
        summary = run_figure1(data, out, per_net, base, names, rates, sweep_steps, progress=not quiet)
    except _USER_ERRORS as e:
        _fail(str(e))
    for net, s in summary["sweep"]["nets"].items():
        table = ", ".join(
            f"{r['lr']:g}: {'diverged' if r['diverged'] else format(r['train_top1_err'], '.3f')}"
            for r in s["rows"]
        )
        click.echo(f"sweep {net:<5} train err after {sweep_steps} steps: {table} -> lr {s['best_lr']}")
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
    for pct in ("25", "50"):
        ratio = summary.get(f"tanh_over_relu_at_{pct}pct")
        if ratio:
            bound = "" if ratio["bound"] == "=" else "more than "
            click.echo(
                f"tanh / relu epochs to {pct}% train err: {bound}{ratio['ratio']:.2f} "
                f"(paper, at 25%: about {PAPER_RATIO:g})"
            )
    click.echo(f"wrote {out / 'ablation.json'} and {out / 'fig1.png'}")


if __name__ == "__main__":
    main()
