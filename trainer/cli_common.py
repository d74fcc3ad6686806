"""What every `alextrain` command shares: the one-line error, the shared options (one
definition, one help text each), output checks and the JSON/table result.

Only click and light modules are imported here, so `alextrain --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from pipeline.augment import StatsError
from preprocess.cli import InterruptibleGroup, UserPath
from preprocess.walk import clean_name
from shards import layout
from shards.reader import DatasetError
from trainer.errors import CheckpointError, FigureError, TrainError
from trainer.options import option

USER_ERRORS = (
    DatasetError,
    layout.LayoutError,
    StatsError,
    CheckpointError,
    TrainError,
    FigureError,
    ValueError,
)


class Group(InterruptibleGroup):
    """alextrain's commands: Ctrl-C is one line and exit 130, as in alexprep, saying what each
    set with `on_interrupt` (`run`: where it goes on from, on rank 0 alone)."""

    program = "alextrain"


def fail(message: str) -> None:
    click.echo(f"alextrain: error: {message}", err=True)
    sys.exit(2)


def one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"alextrain: warning: {message}\n"


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
        "--data", required=required, type=UserPath(file_okay=False, path_type=Path), help=help_
    )


def checkpoint_argument(f: Callable) -> Callable:
    return click.argument("checkpoint", type=UserPath(path_type=Path))(f)


device_option = option("device")  # the same flag, default and help as `alextrain run`'s
num_threads_option = option("num_threads")
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Images per batch."
)


ten_crop_option = click.option(
    "--ten-crop/--centre-crop",
    default=True,
    show_default=True,
    help="The paper's test (section 4.1): 5 patches (4 corners, centre) and their mirrors, softmax "
    "averaged; --centre-crop: the centre patch alone (10x fewer crops; what training's val error uses).",
)


def json_options(f: Callable) -> Callable:
    """--json (print) and --json-out PATH (write): the same two flags on every command with a result."""
    f = click.option(
        "--json-out",
        type=UserPath(dir_okay=False, readable=False, path_type=Path),  # written, never read
        callback=_not_stdout,
        help=HELP["json_out"],
    )(f)
    return click.option("--json", "as_json", is_flag=True, help=HELP["json"])(f)


def _not_stdout(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """`--json-out -` would write a file named "-"; stdout is what --json is for."""
    if value is not None and str(value) == "-":
        raise click.BadParameter("'-' is not a file; --json prints the JSON on stdout")
    return value


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
            fail(f"{path}: is a folder; give a file name")
    if image is not None and image.suffix.lower() not in image_types:
        fail(f"{image}: unknown image type {image.suffix!r}; use one of {', '.join(image_types)}")
    for path in (image, data):
        if path is None:
            continue
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            fail(f"{path}: {blocked} is a file, not a folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"{path}: cannot create its folder ({e.strerror or e})")
        if not os.access(path.parent, os.W_OK):
            fail(f"{path}: folder {path.parent} is not writable")


def note(message: str, as_json: bool) -> None:
    """Progress notes go to stderr when stdout carries JSON."""
    click.echo(message, err=as_json)


def emit(result: object, as_json: bool, json_out: Path | None, table: Callable[[], None]) -> None:
    """The result as a table (default) or JSON on stdout, and as a JSON file with --json-out."""
    text = json.dumps(_bytes_escaped(result), indent=2) + "\n"
    if as_json:
        click.echo(text, nl=False)
    else:
        table()
    if json_out:
        try:
            layout.write_atomic(json_out, text.encode())
        except layout.LayoutError as e:  # a full disk, a read-only folder
            fail(str(e))
        note(f"wrote {json_out}", as_json)


def _bytes_escaped(value: object) -> object:
    """Every string of a JSON result with a file name's non-UTF-8 bytes as \\xNN (as the tables
    show them): lone surrogates would make JSON that strict parsers refuse."""
    if isinstance(value, str):
        return clean_name(value)
    if isinstance(value, dict):
        return {_bytes_escaped(k): _bytes_escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bytes_escaped(v) for v in value]
    return value


def in_run_folder(checkpoint: Path, name: str, optional: bool = False) -> Path | None:
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
