"""A run, and the statistics it normalises with, belong to one dataset (issue 21, class 2):
dataset.json's plan_sha256 (images, labels, order), shard size and quality are compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.augment import StatsError, load_stats
from tests.conftest import alexprep, alextrain
from tests.faults_common import make_dataset, make_source

TRAIN = ("--arch", "cifar", "--crop", 32, "--global-batch", 4, "--steps-per-epoch", 2)
QUICK = ("--num-threads", 1, "--device", "cpu", "--quiet")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): one short epoch on a small dataset, read with --no-mmap."""
    root = tmp_path_factory.mktemp("dataset")
    data = make_dataset(root)
    run = root / "run"
    alextrain("run", "--data", data, "--out", run, "--epochs", 1, "--no-mmap", *TRAIN, *QUICK)
    assert json.loads((run / "config.json").read_text())["loader"]["mmap"] is False
    return data, run


def _reshard(root: Path, *args: object) -> Path:
    """The module's images sharded again with other arguments, with their own pca-stats."""
    out = root / "again"
    alexprep("shard", make_source(root / "src"), out, "--size", 32, "--workers", 1, "--quiet", *args)
    alexprep("pca-stats", out, "--workers", 1, "--quiet")
    return out


@pytest.mark.parametrize(
    "args, differs",
    [
        (("--seed", 1), "its images or their order (plan_sha256 in dataset.json)"),
        (("--shard-size", 5), "shard_size"),
        (("--quality", 75), "quality"),  # not in the list: other pixels, same plan
    ],
)
def test_resume_on_a_resharded_dataset_is_refused(trained, tmp_path, args, differs):
    data, run = trained
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    other = _reshard(tmp_path, *args)
    proc = alextrain("run", "--data", other, "--out", mine, "--resume", "--epochs", 2, *QUICK, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--resume with other settings" in proc.stderr and differs in proc.stderr, proc.stderr
    assert len((mine / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained on


def test_resume_on_its_own_dataset_still_works(trained, tmp_path):
    data, run = trained
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    alextrain("run", "--data", data, "--out", mine, "--resume", "--epochs", 2, *QUICK)
    assert len((mine / "metrics.jsonl").read_text().splitlines()) == 2


def test_stats_copied_from_another_dataset_are_refused(trained, tmp_path):
    data, _ = trained
    other = _reshard(tmp_path, "--seed", 1)
    load_stats(other)
    for name in ("stats.json", "mean_image.npy"):
        shutil.copy(data / name, other / name)
    with pytest.raises(StatsError, match="stats.json: computed from another dataset"):
        load_stats(other)


def test_a_dataset_without_a_train_split_uses_the_training_sets_stats(trained, tmp_path):
    # an eval-only dataset cannot compute its own statistics: the training set's are the right ones
    data, _ = trained
    src = make_source(tmp_path / "src")
    out = tmp_path / "val-only"
    alexprep("shard", src / "val", out, "--split", "val", "--size", 32, "--quiet")
    for name in ("stats.json", "mean_image.npy"):
        shutil.copy(data / name, out / name)
    assert load_stats(out).mean_image.shape == (32, 32, 3)


def test_readers_say_a_dataset_is_being_written_and_a_foreign_dataset_json_is_not_ours(tmp_path):
    """verify and pca-stats said "sharding is not complete; re-run `alexprep shard`" while a
    shard run was writing OUT (a second writer, refused) and for a dataset.json alexprep never
    wrote (whose re-run was refused as another dataset: a loop). A probe found both."""
    from shards import layout

    out = make_dataset(tmp_path, stats=False, classes=2, train=2)
    meta = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**meta, "complete": False}))
    with layout.NodeLock(out, 0):  # as `alexprep shard` holds it while it writes
        for cmd in ("verify", "pca-stats"):
            proc = alexprep(cmd, out, check=False)
            assert proc.returncode != 0 and "`alexprep shard` (pid " in proc.stderr, proc.stderr
            assert "is writing it now; wait for it to finish" in proc.stderr
    proc = alexprep("verify", out, check=False)  # the writer gone: finish it
    assert "sharding is not complete; re-run `alexprep shard` to finish" in proc.stderr, proc.stderr
    (out / "dataset.json").write_text('{"version": 99}')
    proc = alexprep("pca-stats", out, check=False)
    assert "dataset.json: not a dataset.json that `alexprep shard` wrote (no format_version)" in proc.stderr
