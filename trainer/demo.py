"""`alextrain demo OUT`: the whole product, end to end, on data it makes itself, in minutes.

A newcomer's first question is "does it work, and what does it make?". This answers it with
nothing but the clone: `preprocess.demo` draws a small labelled image set (ten classes of
shapes and gratings, JPEGs of varied sizes in an ImageFolder tree), and then the real commands
run on it, in the order a user would type them:

    alexprep shard -> alexprep verify -> alexprep pca-stats -> alextrain run (the small CIFAR
    net, a few epochs) -> alextrain eval -> kernels (Figure 3) -> predict and neighbors
    (Figure 4) -> report

Each step is the command itself, run in this process (one torch import for all of them) with
the arguments printed first, so every line of output is what that command prints when typed,
and the printed line can be copied to run it again. Nothing is special-cased for the demo: a
step that fails stops the demo naming the step. Re-running on the same OUT reuses what is
complete (the images, the shards, a finished run) and redoes the rest.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from preprocess.demo import CLASSES, make_images
from trainer.errors import TrainError

# The demo's recipe: the CIFAR net at the stored 32 px, the paper's SGD, except a smaller batch
# and lr than the paper's 128 and 0.01: with 128, 1,200 images are 9 steps an epoch, and the net
# needs many epochs to leave its start; at 0.01 and batch 32 it died (loss stuck at ln 10). These
# reach 5-13 % val top-1 error in 8 epochs (from 90 %: chance; where in that range depends on
# the CPU's thread count, which changes the order of float sums).
SIZE = 32
EPOCHS = 8
BATCH_SIZE = 32
LR = 0.003
TRAIN_PER_CLASS, VAL_PER_CLASS = 120, 30
SHARD_SIZE = 300
NUM_THREADS = 1  # loader and torch threads: on 2 busy cores, 1 trained 4x faster than 2 (299 vs 73 img/s)
SHOWN = ("circle", "triangle", "vertical-stripes", "checkerboard", "ring", "dots")  # Figure 4's images


class DemoError(TrainError):
    """A demo step failed (its own error was printed above); names the step to re-run."""


@dataclass(frozen=True)
class Step:
    title: str
    program: str  # "alexprep" or "alextrain"
    args: list[str]

    def line(self) -> str:
        return " ".join([self.program, *map(shlex.quote, self.args)])


def steps(out: Path, epochs: int = EPOCHS) -> list[Step]:
    """The commands the demo runs, in order (paths as given, so the printed lines can be re-run)."""
    images, shards, run = out / "images", out / "shards", out / "run"
    val = images / "val"
    shown = [str(val / name / f"{name}-0000.jpg") for name in SHOWN]
    queries = [arg for name in SHOWN[:3] for arg in ("--query", str(val / name / f"{name}-0001.jpg"))]
    d, s, r = str(images), str(shards), str(run)
    return [
        Step(
            "shard the images (256 -> --size 32 here)",
            "alexprep",
            ["shard", d, s, "--size", str(SIZE), "--shard-size", str(SHARD_SIZE), "--quiet"],
        ),
        Step("verify every shard", "alexprep", ["verify", s, "--quiet"]),
        Step("RGB statistics and mean image", "alexprep", ["pca-stats", s, "--quiet"]),
        Step(
            f"train the small CIFAR net for {epochs} epochs",
            "alextrain",
            [
                "run",
                "--data",
                s,
                "--out",
                r,
                "--arch",
                "cifar",
                "--epochs",
                str(epochs),
                "--global-batch",
                str(BATCH_SIZE),
                "--lr",
                str(LR),
                "--num-threads",
                str(NUM_THREADS),
                "--auto-resume",
            ],
        ),
        Step("evaluate on the val split", "alextrain", ["eval", "--data", s, "--checkpoint", r]),
        Step("Figure 3: conv1 kernels", "alextrain", ["kernels", r]),
        Step("Figure 4 (left): top-5 predictions", "alextrain", ["predict", r, *shown]),
        Step("Figure 4 (right): nearest training images", "alextrain", ["neighbors", r, *queries]),
        Step("curves and the run's numbers", "alextrain", ["report", r]),
    ]


def _invoke(step: Step, alextrain: click.Group) -> None:
    """Run one step's command in this process, exactly as its console script would."""
    if step.program == "alexprep":
        from preprocess.cli import main
    else:
        main = alextrain
    try:
        main.main(step.args, prog_name=step.program, standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C in a command that leaves it to click
        raise KeyboardInterrupt from None
    except SystemExit as e:  # a command's own refusal (already printed) or verify's exit 1
        if e.code == 130:  # Ctrl-C, said by the command (`run`: where it goes on from)
            raise KeyboardInterrupt from None
        if e.code not in (None, 0):
            raise DemoError(f"step failed (exit {e.code}): {step.line()}") from None
    except Exception as e:  # noqa: BLE001 -- click's usage errors and anything else: name the step
        raise DemoError(f"step failed ({type(e).__name__}: {e}): {step.line()}") from None


def run_demo(
    out: Path, alextrain: click.Group, epochs: int = EPOCHS, echo: Callable[[str], None] = print
) -> dict:
    """Make the images, run every step, and say what was made where; returns the timings.
    `alextrain`: the CLI group whose commands the steps run (passed in: this module is below it)."""
    t0 = time.perf_counter()
    echo(f"== making the demo images: {len(CLASSES)} classes ({', '.join(CLASSES)})")
    try:
        made = make_images(out / "images", TRAIN_PER_CLASS, VAL_PER_CLASS)
    except OSError as e:  # a read-only or full disk, a file where a folder must be
        raise DemoError(f"{e.filename or out}: cannot write the demo images ({e.strerror or e})") from None
    counts = ", ".join(f"{n} {split}" for split, n in made["images"].items())
    echo(f"{out / 'images'}: {counts} JPEGs in an ImageFolder tree (<split>/<class>/*.jpg)")
    timings = {"images": time.perf_counter() - t0}
    for step in steps(out, epochs):
        echo(f"\n== {step.title}\n$ {step.line()}")
        t = time.perf_counter()
        _invoke(step, alextrain)
        timings[step.args[0]] = time.perf_counter() - t
        echo(f"({timings[step.args[0]]:.1f} s)")
    total = time.perf_counter() - t0
    run = out / "run"
    echo(f"\n== demo done in {total:.0f} s. What it made:")
    for path, what in (
        (out / "images", "the generated JPEGs (train/, val/)"),
        (out / "shards", "WebDataset shards, manifest, stats.json, mean_image.npy"),
        (run / "last.pt", "checkpoint (best.pt: the best val epoch); metrics.jsonl, config.json"),
        (run / "fig3.png", "Figure 3: the conv1 kernels"),
        (run / "fig4.png", "Figure 4 (left): predictions"),
        (run / "fig4b.png", "Figure 4 (right): nearest training images"),
        (run / "report.md", "the report; its curves in report.png"),
    ):
        echo(f"  {str(path):<40} {what}")
    echo("Next: the same commands on your own images or ImageNet (README, Quickstart).")
    return {"seconds": total, "steps": timings}
