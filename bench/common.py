"""The command line as every bench script treats it: a user's mistake is one line, exit 2.

A bad number is refused by argparse (`at_least`, `positive`); a path is made absolute when it is
parsed (`absolute`, `folder`, `output`), so that a child process run from another folder gets
the same file; a dataset or setting the library refuses (`refused`) is named by `ap.error`,
as bench/train_throughput.py does: the usage line, then `prog: error: <file or argument>: why`,
exit 2, never a traceback. Only the standard library at import (bench/gpu_check.py checks its
third-party imports itself, before any work).
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def last_line(done: subprocess.CompletedProcess) -> str:
    """A finished child's own last line of stderr, else of stdout: why it failed, in one line
    (the rest is in its log)."""
    lines = (done.stderr or "").strip().splitlines() or (done.stdout or "").strip().splitlines()
    return lines[-1] if lines else "no output"


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


positive = at_least(1)


def absolute(text: str) -> Path:
    """An argparse type: the path, absolute (from the folder the script was started in)."""
    return Path(text).expanduser().absolute()


def folder(text: str) -> Path:
    """An argparse type: a folder to work in, absolute; made later if missing, but not a file."""
    path = absolute(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    return path


def output(text: str) -> Path:
    """An argparse type: a file to write at the end, absolute; refused now, not after the run, if
    its folder is missing or it is a folder."""
    path = absolute(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no folder {path.parent}")
    return path


@contextmanager
def refused(ap: argparse.ArgumentParser, what: str = "") -> Iterator[None]:
    """Inside: what the library refuses in the user's data or settings (not a shards folder,
    fewer samples than a batch, ...) becomes `ap.error(what + its message)`: one line, exit 2."""
    from shards.reader import DatasetError

    try:
        yield
    except (DatasetError, OSError, ValueError) as e:
        ap.error(f"{what}{e}")


def batch_fits(ap: argparse.ArgumentParser, data: Path, meta: dict, batch: int) -> None:
    """A --batch-size over the training split of `data` (its dataset.json `meta`) named as that."""
    written = meta["splits"].get("train", {}).get("written")
    if isinstance(written, int) and batch > written:
        ap.error(f"--batch-size {batch}: more than the {written} training samples of {data}")


def cuda_or_error(ap: argparse.ArgumentParser, device: str) -> None:
    """`--device cuda` on a machine whose torch sees no GPU: one line, not DALI's traceback."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
