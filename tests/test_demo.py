"""`alextrain demo`: the drawn image set, and the whole chain run on it with nothing from ../shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
import cv2
import pytest

from preprocess.demo import CLASSES, MARKER, make_images
from shards.layout import LayoutError
from trainer.demo import Step, _invoke, steps

ROOT = Path(__file__).resolve().parents[1]


def test_images_are_an_imagefolder_tree_of_varied_jpegs_and_reproducible(tmp_path):
    made = make_images(tmp_path / "a", 3, 2, seed=5)
    assert made["images"] == {"train": 30, "val": 20} and made["classes"] == list(CLASSES)
    files = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 50 and {f.parent.name for f in files} == set(CLASSES)
    shapes = {cv2.imread(str(f)).shape[:2] for f in files}
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes) and len(shapes) > 20
    make_images(tmp_path / "b", 3, 2, seed=5)
    again = sorted((tmp_path / "b").rglob("*.jpg"))
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in again]  # a pure function of args


def test_a_complete_set_is_reused_and_a_foreign_folder_refused(tmp_path):
    make_images(tmp_path / "a", 2, 1)
    first = (tmp_path / "a" / "train" / "dots" / "dots-0000.jpg").stat().st_mtime_ns
    make_images(tmp_path / "a", 2, 1)  # same arguments: nothing rewritten
    assert (tmp_path / "a" / "train" / "dots" / "dots-0000.jpg").stat().st_mtime_ns == first
    with pytest.raises(LayoutError, match="not a demo image set made with these arguments"):
        make_images(tmp_path / "a", 3, 1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(LayoutError, match="mine: exists"):
        make_images(tmp_path / "mine", 2, 1)
    assert not (tmp_path / "mine" / MARKER).exists()


def test_the_steps_are_the_real_commands_in_order(tmp_path):
    names = [(s.program, s.args[0]) for s in steps(tmp_path / "out")]
    assert names == [
        ("alexprep", "shard"), ("alexprep", "verify"), ("alexprep", "pca-stats"), ("alextrain", "run"),
        ("alextrain", "eval"), ("alextrain", "kernels"), ("alextrain", "predict"),
        ("alextrain", "neighbors"), ("alextrain", "report"),
    ]  # fmt: skip


@pytest.mark.slow
def test_demo_end_to_end_in_a_folder_with_nothing_beside_it(tmp_path):
    """The README's first command's second half, as a user runs it: a net that learned, its figures
    and report, and the time it took (printed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "demo", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "out" / "run"
    for name in (
        "best.pt",
        "last.pt",
        "metrics.jsonl",
        "fig3.png",
        "fig4.png",
        "fig4b.png",
        "report.md",
        "report.png",
    ):
        assert (run / name).is_file(), name
    assert "demo done in" in proc.stdout and "$ alextrain neighbors out/run --query" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert min(r["val_top1_err"] for r in rows) < 0.6  # chance is 0.9: it learned
    assert "not compared with the paper's Table 2" in (run / "report.md").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "demo", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout  # re-run: reuses what is complete


@click.group()
def _steps_group() -> None:
    """Commands that stop as a Ctrl-C stops `alextrain run` (130, said) or leaves it to click."""


@_steps_group.command("said")
def _said() -> None:
    raise SystemExit(130)


@_steps_group.command("bare")
def _bare() -> None:
    raise KeyboardInterrupt


@_steps_group.command("refused")
def _refused() -> None:
    raise SystemExit(2)


@pytest.mark.parametrize("command", ["said", "bare"])
def test_a_step_stopped_by_ctrl_c_is_an_interruption_not_a_failed_step(command):
    # before: "step failed (exit 130)" or "step failed (Abort: )", reported as an error (exit 2)
    with pytest.raises(KeyboardInterrupt):
        _invoke(Step("t", "alextrain", [command]), _steps_group)
    with pytest.raises(Exception, match="step failed \\(exit 2\\): alextrain refused"):
        _invoke(Step("t", "alextrain", ["refused"]), _steps_group)


@pytest.mark.slow  # a real process and its signal
def test_ctrl_c_while_drawing_says_how_to_go_on(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "demo", "out"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    assert "making the demo images" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "re-run `alextrain demo out` to go on" in err, err
