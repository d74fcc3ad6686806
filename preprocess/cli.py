"""`alexprep`: the offline half of the pipeline (shard, verify, pca-stats).

Only click is imported up front: `--help` must be instant, and `shard` never imports torch
(nor anything that does, such as webdataset). Each command imports what it uses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from preprocess.defaults import (  # imports nothing heavy: --help stays instant
    DEFAULT_SEED,
    DEFAULT_SHARD_SIZE,
    IMAGE_SIZE,
    JPEG_QUALITY,
    MAX_BYTES,
    MAX_PIXELS,
)
from preprocess.walk import printable


class UserPath(click.Path):
    """click.Path with `~` expanded: `--out=~/x` and a quoted "~/x" reach us without a shell's help.
    `output_file`: a name ending in `/` is refused, since pathlib drops the slash and `--out
    reports/` would write a file called `reports` (a folder that exists is refused later, with
    the command's other output checks, as `prepare_outputs` does)."""

    def __init__(self, *args, output_file: bool = False, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.output_file = output_file or not self.dir_okay

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if isinstance(value, str):
            if self.output_file and value.endswith(os.sep):
                self.fail(f"{value}: names a folder (it ends in {os.sep}); give a file name", param, ctx)
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)


quiet_option = click.option("--quiet", is_flag=True, help="No progress bar.")
workers_option = click.option(
    "--workers", type=click.IntRange(0), default=0, help="Worker processes [default: all cores]."
)


def image_limit_options(f):  # noqa: ANN001, ANN201
    """--max-pixels and --max-bytes, the bounds on one input image: here and on alextrain's
    commands that read a user's image (predict, neighbors)."""
    f = click.option(
        "--max-bytes",
        type=click.IntRange(1),
        default=MAX_BYTES,
        show_default=True,
        help="Reject an input file larger than this many bytes.",
    )(f)
    return click.option(
        "--max-pixels",
        type=click.IntRange(1),
        default=MAX_PIXELS,
        show_default=True,
        help="Reject an input whose header states more pixels than this (checked before decoding), "
        "or whose aspect ratio would resize it to more.",
    )(f)


def _user_errors() -> tuple[type[Exception], ...]:
    from preprocess.shard import ShardError
    from preprocess.sources import SourceError
    from shards.layout import LayoutError
    from shards.reader import DamagedDataError, DatasetError

    return (ShardError, SourceError, DatasetError, DamagedDataError, LayoutError)


_ON_INTERRUPT = "on_interrupt"  # ctx.meta key: the running command's Ctrl-C line


class InterruptibleGroup(click.Group):
    """A CLI's commands (alexprep's; alextrain's subclass it): Ctrl-C in any of them is one line
    saying what is kept and how to go on, exit 130 (the shell's code for SIGINT), instead of
    click's bare "Aborted!" and exit 1. One place for every command; each says its own line
    with `on_interrupt`."""

    program = "alexprep"

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            from tqdm import tqdm  # on a line of its own, not after a progress bar

            then = ctx.meta.get(_ON_INTERRUPT, "its result is not complete: re-run the command")
            then = then() if callable(then) else then
            if then is not None:
                tqdm.write(f"{self.program}: interrupted; {printable(then)}", file=sys.stderr)
            sys.exit(128 + 2)


def on_interrupt(then: str | Callable[[], str | None]) -> None:
    """What the running command's Ctrl-C line says after "interrupted; ": what is kept, how to go
    on; a callable is asked at the Ctrl-C (what is kept by then), and None says nothing (a rank
    that leaves the saying to rank 0)."""
    click.get_current_context().meta[_ON_INTERRUPT] = then


def _fail(message: str) -> None:
    click.echo(f"alexprep: error: {printable(message)}", err=True)
    sys.exit(2)


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Prepare ImageNet (or any labelled image folder) for AlexNet training.

    \b
    alexprep shard SRC OUT     source images -> 256x256 WebDataset shards + DALI index + manifest
    alexprep verify OUT        re-read every shard and check it
    alexprep pca-stats OUT     RGB mean, covariance eigenbasis and mean image of OUT/train
    """


@main.command("shard")
@click.argument("src", type=UserPath(path_type=Path))
@click.argument("out", type=UserPath(path_type=Path))
@click.option(
    "--labels",
    type=UserPath(path_type=Path),
    help="CSV of `filename,label` for a flat SRC folder (filename: relative to SRC, or absolute "
    "under it; label: class name or wnid).",
)
@click.option(
    "--label-from-name",
    is_flag=True,
    help="Flat SRC of ImageNet-style names `<wnid>_<rest>.JPEG`: the label is the part before `_`.",
)
@click.option(
    "--split",
    help="Split name for a flat folder (--labels, --label-from-name) or a one-split SRC/<class>/ "
    "tree [default: train]; refused where SRC names its own splits.",
)
@click.option(
    "--synsets",
    type=UserPath(exists=True, dir_okay=False, path_type=Path),
    help="LOC_synset_mapping.txt-style file (`wnid name, ...`) for human-readable names.",
)
@click.option(
    "--devkit",
    type=UserPath(exists=True, file_okay=False, path_type=Path),
    help="ILSVRC2012_devkit_t12 folder, for a flat val/ labelled by the devkit.",
)
@click.option(
    "--size",
    type=click.IntRange(8, 4096),
    default=IMAGE_SIZE,
    show_default=True,
    help="Shorter side is resized to SIZE, then the central SIZE x SIZE is kept.",
)
@click.option(
    "--quality",
    type=click.IntRange(1, 100),
    default=JPEG_QUALITY,
    show_default=True,
    help="JPEG quality of the stored images.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(1),
    default=DEFAULT_SHARD_SIZE,
    show_default=True,
    help="Inputs per shard (rejected inputs leave gaps).",
)
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=DEFAULT_SEED,
    show_default=True,
    help="Seed of the global shuffle of the train split.",
)
@workers_option
@click.option(
    "--num-nodes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Split the work over N machines writing to one (shared) OUT.",
)
@click.option(
    "--node-rank",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="This machine's part: shards R, R+N, R+2N, ...",
)
@image_limit_options
@click.option(
    "--redo-shard",
    "redo_shards",
    multiple=True,
    metavar="NAME",
    help="Rewrite this shard (e.g. train-000003) even if complete: repairs a damaged shard, "
    "byte-identical. Repeatable.",
)
@click.option("--strict", is_flag=True, help="Fail on the first rejected input.")
@quiet_option
def shard_cmd(
    src: Path,
    out: Path,
    labels: Path | None,
    label_from_name: bool,
    split: str | None,
    synsets: Path | None,
    devkit: Path | None,
    quiet: bool,
    redo_shards: tuple[str, ...],
    **kw: int,
) -> None:
    """Shard the images under SRC into WebDataset tars under OUT.

    SRC layouts: ILSVRC-2012 (train/<wnid>/, val/ in folders or flat with LOC_val_solution.csv
    or the devkit), an ImageFolder tree (SRC/<split>/<class>/ or SRC/<class>/), or a flat
    folder with --labels or --label-from-name. Re-running resumes: complete shards are kept, the rest redone.
    One run per OUT and node rank at a time (a lock file in OUT); only regular files of at most
    --max-bytes and --max-pixels are read; every other input is rejected with its reason.
    """
    on_interrupt(f"complete shards are kept: re-run the same command to go on ({out})")
    from preprocess.shard import Options, shard
    from preprocess.sources import discover

    opt = Options(progress=not quiet, redo_shards=redo_shards, **kw)
    try:
        source = discover(src, labels, synsets, devkit, split, label_from_name, exclude=out)
        summary = shard(source, out, opt)
    except _user_errors() as e:
        _fail(str(e))
    click.echo(f"layout: {summary.layout} ({'; '.join(summary.notes) or 'as found'})")
    for name in sorted(summary.found):
        f, w, r = summary.found[name], summary.written[name], summary.rejected[name]
        click.echo(f"{name}: found {f}, written {w}, rejected {r}")
    rate = summary.images_processed / summary.seconds if summary.seconds else 0.0
    click.echo(
        f"shards written now: {summary.shards_done_now}, already complete: "
        f"{summary.shards_skipped}; {summary.images_processed} images in "
        f"{summary.seconds:.1f}s ({rate:.0f} img/s)"
    )
    for line in summary.first_rejects:
        click.echo(f"rejected: {printable(line)}")
    total, shown = sum(summary.rejected.values()), len(summary.first_rejects)
    if total:
        more = f" ({shown} shown above)" if 0 < shown < total else ""
        click.echo(
            f"{total} reject(s){more}, each with its reason: {printable(str(out))}/<split>/rejects.parquet"
        )
    if summary.changed:
        stats = any(line.startswith("train-") for line in summary.changed)  # pca-stats reads train only
        click.echo(
            f"alexprep: warning: redone from changed source files, not as they were written: "
            f"{printable('; '.join(summary.changed))}"
            + (
                "; statistics of the old images no longer fit (`alextrain run` refuses them): re-run "
                f"`alexprep pca-stats {printable(str(out))}`"
                if stats
                else ""
            ),
            err=True,
        )
    if summary.rebuilt:
        click.echo(f"rebuilt from the shards' parts: {', '.join(summary.rebuilt)}")
    if summary.wrote_nothing:
        click.echo("nothing to do: every shard is complete and matches its manifest part; nothing written")
    if summary.complete and any(summary.found.values()) and not any(summary.written.values()):
        _fail(
            f"{printable(str(out))}: every one of the {sum(summary.found.values())} input(s) was rejected "
            "(the reasons above and in <split>/rejects.parquet): the dataset holds no image; fix the "
            "inputs, then re-run into an empty OUT"
        )
    if summary.empty_classes:
        _warn_empty_classes(summary.empty_classes, flat=summary.layout == "flat")
    if summary.complete:
        click.echo(f"complete: {printable(str(out))}")
    else:
        click.echo(
            "this node's shards are done; the dataset completes when every node has "
            "finished (re-run without --node-rank on the shared OUT to merge)"
        )


def _warn_empty_classes(names: list[str], flat: bool) -> None:
    """Classes with no training image: said in the words of the layout (a labels CSV or file
    names have no class folders to be empty)."""
    n, first = len(names), printable(names[0])
    why, fix = (
        ("every input with this label was rejected", "fix or remove those inputs")
        if flat
        else (
            "its folder is empty, or every image in it was rejected or hidden",
            "add or fix their images, or remove their folders",
        )
    )
    click.echo(
        f"alexprep: warning: {n} class(es) with no training image written (e.g. {first}: {why}); "
        f"`alextrain run` refuses this dataset: {fix}, then re-shard",
        err=True,
    )


@main.command("verify")
@click.argument("out", type=UserPath(path_type=Path))
@workers_option
@quiet_option
def verify_cmd(out: Path, workers: int, quiet: bool) -> None:
    """Re-read every shard under OUT: index offsets, JPEG decode, checksums of every member, counts.

    On success the result is recorded in OUT/verified.json (when OUT is writable), so a training
    run's pre-flight check can skip the full checksum pass while the files are unchanged.
    """
    on_interrupt(f"nothing was recorded as verified: re-run `alexprep verify {out}` to check it")
    from shards.verify import verify

    try:
        problems = verify(out, workers or os.cpu_count() or 1, progress=not quiet)
    except _user_errors() as e:
        _fail(str(e))
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"verify: {len(problems)} problem(s) in {printable(str(out))}", err=True)
        sys.exit(1)
    click.echo(f"verify: {printable(str(out))} is intact")


@main.command("pca-stats")
@click.argument("out", type=UserPath(path_type=Path))
@workers_option
@click.option("--max-images", type=click.IntRange(1), help="Quick estimate from the first N train images.")
@quiet_option
def pca_stats_cmd(out: Path, workers: int, max_images: int | None, quiet: bool) -> None:
    """RGB mean, covariance and its eigenbasis over OUT/train, and the per-pixel mean image.

    Writes OUT/stats.json (pixel scale 0-255; eigvec columns are eigenvectors, eigval
    descending) and OUT/mean_image.npy (size x size x 3 float32, RGB), which the training
    pipeline uses for mean subtraction and PCA lighting.
    """
    on_interrupt(f"nothing was written (stats.json comes at the end): re-run `alexprep pca-stats {out}`")
    from preprocess.pca import pca_stats

    try:
        stats = pca_stats(out, workers, max_images, progress=not quiet)
    except _user_errors() as e:
        _fail(str(e))
    fmt = lambda xs: " ".join(f"{x:8.3f}" for x in xs)  # noqa: E731
    click.echo(
        f"images: {stats['num_images']} ({stats['num_pixels']} pixels)"
        + (" -- estimate from --max-images" if stats["computed_from"]["estimate"] else "")
    )
    click.echo(f"mean RGB: {fmt(stats['mean_rgb'])}")
    click.echo(f"std  RGB: {fmt(stats['std_rgb'])}")
    click.echo(f"eigval:   {fmt(stats['eigval'])}")
    for row in stats["eigvec"]:
        click.echo(f"eigvec:   {fmt(row)}")
    click.echo(f"wrote {out / 'stats.json'} and {out / 'mean_image.npy'}")


if __name__ == "__main__":
    main()
