"""Figure commands write into the run folder by default, never into the current folder; an
output path that cannot be one, and a run with nothing to show yet, are one line each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import alextrain
from trainer.cli import main


def test_predict_and_report_default_into_the_run_folder(demo_data, demo_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = demo_data / "images" / "val" / "dots" / "dots-0000.jpg"
    for args, made in ((["predict", demo_run, image], "fig4.png"), (["report", demo_run], "report.md")):
        result = CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        assert (demo_run / made).is_file() and str(demo_run / made) in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())
    checkpoint_file = CliRunner().invoke(main, ["predict", str(demo_run / "last.pt"), str(image)])
    assert checkpoint_file.exit_code == 0 and f"wrote {demo_run / 'fig4.png'}" in checkpoint_file.stdout


def _one_line_error(proc, message: str) -> None:
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_json_out_dash_or_under_a_file_is_refused_before_the_work(demo_data, demo_run, tmp_path):
    shards = demo_data / "shards"
    # before: a file named "-" in the current folder
    proc = alextrain("eval", "--data", shards, "--checkpoint", demo_run, "--json-out", "-", check=False)
    assert proc.returncode == 2 and "'-' is not a file; --json prints the JSON on stdout" in proc.stderr
    assert not (Path.cwd() / "-").exists()
    # before: "cannot create its folder (File exists)"; a file two levels up (test_cli: one level)
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "deeper" / "x.json"
    proc = alextrain("summary", "--arch", "cifar", "--json-out", target, check=False)
    _one_line_error(proc, f"{target}: {tmp_path / 'afile'} is a file, not a folder")


def test_a_split_the_data_lacks_is_named_and_a_run_without_checkpoint_is_said(demo_data, demo_run, tmp_path):
    shards = demo_data / "shards"
    proc = alextrain("eval", "--data", shards, "--checkpoint", demo_run, "--split", "test", check=False)
    _one_line_error(proc, f"--split test: {shards} has no such split (have: train, val)")
    started = tmp_path / "started"  # killed in its first epoch: config.json and no checkpoint
    started.mkdir()
    shutil.copy(demo_run / "config.json", started)
    for command in ("kernels", "eval"):
        args = (
            [command, started]
            if command == "kernels"
            else [command, "--data", shards, "--checkpoint", started]
        )
        _one_line_error(alextrain(*args, check=False), "a run with no checkpoint yet")
    shutil.copy(demo_run / "metrics.jsonl", started)  # a finished run's record, its weights not kept
    _one_line_error(alextrain("kernels", started, check=False), "its checkpoints are not here")


@pytest.mark.parametrize("args", [["--arch", "cifar", "--towers", "2"], ["--arch", "cifar", "--towers", "1"]])
def test_summary_refuses_what_run_refuses(args):
    # before: --towers 2 (the default) given with cifar was accepted by summary, refused by run
    _one_line_error(alextrain("summary", *args, check=False), "--arch cifar has one tower; leave it out")
