"""`alextrain kernels`, `predict`, `neighbors` and `report`: Figures 3 and 4, and a run's report."""

from __future__ import annotations

from pathlib import Path

import click

from preprocess.cli import UserPath, image_limit_options  # click only: --help stays fast
from preprocess.walk import printable
from trainer.cli_common import (
    USER_ERRORS,
    batch_size_option,
    checkpoint_argument,
    data_option,
    device_option,
    emit,
    fail,
    in_run_folder,
    json_options,
    note,
    num_threads_option,
    prepare_outputs,
    ten_crop_option,
)


@click.command("kernels")
@checkpoint_argument
@click.option(
    "--out",
    type=UserPath(output_file=True, path_type=Path),
    help="Image file [default: fig3.png in the run folder].",
)
@click.option(
    "--scale", type=click.IntRange(1, 32), help="Pixels per weight [default: ~44 px a kernel; 4 for 11x11]."
)
def kernels_cmd(checkpoint: Path, out: Path | None, scale: int | None) -> None:
    """Figure 3: the conv1 kernels as an image grid, titled, one labelled block per tower.

    CHECKPOINT is a checkpoint file, or a run folder (its best.pt, else last.pt).
    """
    out = out or in_run_folder(checkpoint, "fig3.png")
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
    except USER_ERRORS as e:
        fail(str(e))
    click.echo(
        f"{sum(len(t) for t in towers)} kernels ({shape}) in {len(towers)} tower(s) -> {out} "
        f"({img.width}x{img.height})"
    )


@click.command("predict")
@checkpoint_argument
@click.argument("images", nargs=-1, required=True, type=UserPath(path_type=Path))
@data_option(required=False)
@click.option(
    "--out",
    type=UserPath(output_file=True, path_type=Path),
    help="Figure 4 (left) as an image (.png, .pdf, ...) [default: fig4.png in the run folder].",
)
@ten_crop_option
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
    out = out or in_run_folder(checkpoint, "fig4.png", optional=True)
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
    except USER_ERRORS as e:
        fail(str(e))

    def table() -> None:
        for r in results:
            truth = f"  (true: {printable(r['true_name'])}, p={r['true_prob']:.4f})" if r["true_name"] else ""
            click.echo(f"{printable(r['image'])}{truth}")
            for t in r["top"]:
                mark = " *" if t["index"] == r["true_index"] else ""
                click.echo(f"  {t['prob']:8.4f}  {printable(t['name'])}{mark}")

    emit([{k: v for k, v in r.items() if k != "_rgb"} for r in results], as_json, json_out, table)
    if unnamed:
        note(
            f"note: no human-readable name for {len(unnamed)} class(es) shown (e.g. index {unnamed[0]}); "
            f"shard with --synsets LOC_synset_mapping.txt or add {data}/class_names.json",
            True,
        )
    if out:
        note(f"wrote {out}", as_json)


@click.command("neighbors")
@checkpoint_argument
@data_option(required=False)
@click.option(
    "--query",
    "queries",
    multiple=True,
    required=True,
    type=UserPath(path_type=Path),
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
    type=UserPath(output_file=True, path_type=Path),
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
    features are extracted once and cached beside the checkpoint, keyed on its content and the
    split's images (features-<name>-<split>-<hash>.npy: a checkpoint rewritten by a later epoch,
    or another dataset's split, is extracted anew);
    the search runs in blocks of --chunk rows, so memory stays bounded. The model and the loader
    run on the one --device.
    """
    out = out or in_run_folder(checkpoint, "fig4b.png", optional=True)
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
    except USER_ERRORS as e:
        fail(str(e))

    def table() -> None:
        for r in result:
            left_out = (
                f"; its own copy (row {', '.join(map(str, r['excluded']))}) left out" if r["excluded"] else ""
            )
            query = f"{printable(r['query'])} ({r['query_class'] or 'class unknown'})"
            click.echo(f"{query}, nearest in {r['split']}{left_out}:")
            for n in r["neighbors"]:
                click.echo(
                    f"  {n['distance']:10.2f}  {printable(n['name'])[:24]:<24}  {printable(n['source'])}"
                )
            if len(r["neighbors"]) < k:  # a small split: fewer rows than asked, said rather than silent
                click.echo(f"  ({len(r['neighbors'])} of --k {k}: the split holds no more)")

    emit(result, as_json, json_out, table)
    if out:
        note(f"wrote {out}", as_json)


@click.command("report")
@click.argument("run", type=UserPath(path_type=Path))
@click.option(
    "--out", type=UserPath(output_file=True, path_type=Path), help="Markdown report [default: RUN/report.md]."
)
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

    if run.is_file() and run.suffix != ".pt" and not (run.parent / "metrics.jsonl").is_file():
        fail(f"{run}: a file, not a run folder (nor a checkpoint in one)")
    run = run.parent if run.is_file() else run
    try:
        result = report(run, out or run / "report.md")
    except USER_ERRORS as e:
        fail(str(e))
    except OSError as e:  # e.g. a read-only run folder
        fail(f"{e.filename or run}: {e.strerror or e}")
    n = result["epochs"]
    click.echo(f"wrote {result['markdown']} and {result['png']} ({n} epoch{'s' * (n != 1)})")
    click.echo(result["why"])
