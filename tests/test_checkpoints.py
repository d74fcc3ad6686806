"""Checkpoint files: which one a path means, atomic writes, keeping best and last N; what a run
records of its data so that it can be found again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import alextrain
from trainer import checkpoint
from trainer.checkpoint import CheckpointError


def test_resolve_prefers_best_then_last_and_names_the_problem(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        checkpoint.resolve(run)
    checkpoint.save(run / "last.pt", {"epoch": 0})
    assert checkpoint.resolve(run) == run / "last.pt"
    checkpoint.save(run / "best.pt", {"epoch": 1})
    assert checkpoint.resolve(run) == run / "best.pt"
    assert checkpoint.resolve(run / "last.pt") == run / "last.pt"  # a file is itself
    with pytest.raises(CheckpointError, match="no such checkpoint or run folder"):
        checkpoint.resolve(tmp_path / "missing")
    assert torch.load(run / "best.pt", weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt"]  # no temporary left


@pytest.mark.slow  # trains a run
def test_a_run_started_with_a_relative_data_resumes_and_predicts_from_anywhere(
    demo_data, tmp_path, monkeypatch
):
    shutil.copytree(demo_data / "shards", tmp_path / "work" / "shards")
    monkeypatch.chdir(tmp_path / "work")
    args = ("--arch", "cifar", "--epochs", 1, "--global-batch", 30, "--num-threads", 1, "--quiet")
    alextrain("run", "--data", "shards", "--out", "run", *args)
    config = tmp_path / "work" / "run" / "config.json"
    assert json.loads(config.read_text())["run"]["data"] == str(tmp_path / "work" / "shards")
    monkeypatch.chdir(tmp_path)  # before: "shards: no dataset.json; run `alexprep shard SRC shards`"
    proc = alextrain("run", "--out", "work/run", "--resume", "--epochs", 2, "--quiet")
    assert "resuming at epoch 1" in proc.stdout
    image = next((demo_data / "images" / "val").rglob("*.jpg"))
    assert alextrain("predict", "work/run", image).returncode == 0  # finds the shards' classes
    # a run recorded before that, from another folder: said, not "re-shard"
    old = json.loads(config.read_text())
    old["run"]["data"] = "shards"
    config.write_text(json.dumps(old))
    proc = alextrain("run", "--out", "work/run", "--resume", "--epochs", 3, check=False)
    assert proc.returncode == 2 and "(recorded relative to the folder the run was started in)" in proc.stderr
    old["run"]["data"] = str(tmp_path / "moved")  # shards moved since: said, with the way on
    config.write_text(json.dumps(old))
    proc = alextrain("run", "--out", "work/run", "--resume", "--epochs", 3, check=False)
    assert f"--data {tmp_path / 'moved'} (from the run's config.json" in proc.stderr, proc.stderr
    assert "is not found here: pass --data" in proc.stderr
    # a checkpoint without its config.json: its last.pt records the same settings (the arch fell
    # back to alexnet's default before: "--crop (crop) = 224: larger than the stored images")
    config.unlink()
    proc = alextrain("run", "--out", "work/run", "--resume", "--epochs", 3, "--quiet")
    assert "resuming at epoch 2" in proc.stdout and json.loads(config.read_text())["model"]["arch"] == "cifar"


def test_keep_1_on_a_run_that_kept_more_prunes_them_and_keep_n_keeps_n(tmp_path):
    """A run resumed with --keep 1 after --keep 3 kept its three step files for good."""
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2):
        checkpoint.save_run(run, {"step": step}, keep=3)
    assert [p.name for p in checkpoint.kept(run)] == ["step-00000001.pt", "step-00000002.pt"]  # < 3: all
    for step in (3, 4):
        checkpoint.save_run(run, {"step": step}, keep=3)
    assert [p.name for p in checkpoint.kept(run)] == [f"step-{s:08d}.pt" for s in (2, 3, 4)]
    checkpoint.save_run(run, {"step": 5}, keep=1)
    assert checkpoint.kept(run) == [] and torch.load(run / "last.pt", weights_only=True) == {"step": 5}
