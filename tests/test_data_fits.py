"""A model is evaluated and resumed only on data it can read as it was trained: its classes in
their order, its stored size, and the statistics its input was normalised with (a fresh probe
found `eval` scoring a model against permuted labels, at another scale and with another mean
image without a word, and an eval-only set that could never be evaluated).

Real shards of the demo's drawn images (tests/conftest.py: demo_data, demo_run), re-sharded or
re-statted as a user would, and the real CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import alexprep, alextrain
from trainer.cli import main


def eval_rows(data: Path, run: Path) -> list[dict]:
    result = CliRunner().invoke(
        main, ["eval", "--data", str(data), "--checkpoint", str(run), "--num-threads", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["rows"]


def refused(*args: object) -> str:
    """The one-line error of a refused `alextrain` call."""
    proc = alextrain(*args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def shard(images: Path, out: Path, size: int = 32, stats: bool = True) -> Path:
    alexprep("shard", images, out, "--size", size, "--shard-size", 60, "--workers", 1, "--quiet")
    if stats:
        alexprep("pca-stats", out, "--workers", 1, "--quiet")
    return out


@pytest.fixture(scope="module")
def images(demo_data) -> Path:
    return demo_data / "images"


def test_eval_refuses_permuted_classes_another_size_and_other_statistics(
    demo_data, demo_run, images, tmp_path
):
    # the same class count, other names: the first class renamed to sort last
    permuted = tmp_path / "permuted"
    shutil.copytree(images, permuted)
    first = sorted(p.name for p in (permuted / "train").iterdir() if p.is_dir())[0]
    for split in ("train", "val"):
        (permuted / split / first).rename(permuted / split / f"zz-{first}")
    why = refused(
        "eval", "--data", shard(permuted, tmp_path / "p"), "--checkpoint", demo_run, "--num-threads", 1
    )
    assert "classes.json: not the classes" in why and "other names or another order" in why

    why = refused(
        "eval", "--data", shard(images, tmp_path / "s48", 48), "--checkpoint", demo_run, "--num-threads", 1
    )
    assert "images stored at 48px" in why and "trained on 32px" in why and "--size 32" in why

    restatted = tmp_path / "restatted"
    shutil.copytree(demo_data / "shards", restatted)
    alexprep("pca-stats", restatted, "--max-images", 5, "--workers", 1, "--quiet")
    why = refused("eval", "--data", restatted, "--checkpoint", demo_run, "--num-threads", 1)
    assert "stats.json: not the statistics" in why and str(demo_data / "shards") in why
    # the figures read the data the same way
    query = next((images / "val").rglob("*.jpg"))
    why = refused("predict", demo_run, query, "--data", restatted, "--out", tmp_path / "p.png")
    assert "stats.json: not the statistics" in why


def test_an_eval_only_set_is_evaluated_with_the_training_sets_statistics(
    demo_data, demo_run, images, tmp_path
):
    val_only = tmp_path / "val-only"
    shutil.copytree(images / "val", val_only / "val")
    data = shard(val_only, tmp_path / "v", stats=False)
    why = refused("eval", "--data", data, "--checkpoint", demo_run, "--num-threads", 1)
    assert "stats.json: missing" in why and f"from {demo_data / 'shards'} into {data}" in why
    for name in ("stats.json", "mean_image.npy"):  # what the message says to do
        shutil.copy(demo_data / "shards" / name, data / name)
    # the same images, the same statistics: the numbers of the training set's own val split
    (mine,) = eval_rows(data, demo_run)
    (theirs,) = eval_rows(demo_data / "shards", demo_run)
    assert mine["samples"] == theirs["samples"] == 40
    assert mine["top1_err"] == pytest.approx(theirs["top1_err"]) and mine["loss"] == pytest.approx(
        theirs["loss"]
    )


def test_a_held_out_set_sharded_as_train_takes_the_models_statistics_too(
    demo_data, demo_run, images, tmp_path
):
    # SRC/<class>/ sharded without --split: its one split is `train`, so pca-stats could make its
    # own; the model's are what it is evaluated with (a loop of refusals before, a review found)
    data = shard(images / "val", tmp_path / "held-out", stats=False)
    for name in ("stats.json", "mean_image.npy"):
        shutil.copy(demo_data / "shards" / name, data / name)
    result = CliRunner().invoke(
        main, ["eval", "--data", str(data), "--checkpoint", str(demo_run), "--split", "train", "--json"]
    )
    assert result.exit_code == 0, result.output
    (mine,), (theirs,) = json.loads(result.stdout)["rows"], eval_rows(demo_data / "shards", demo_run)
    assert mine["samples"] == 40 and mine["top1_err"] == pytest.approx(theirs["top1_err"])


def test_the_same_classes_with_other_labels_and_the_same_statistics_from_another_decoder_fit(
    demo_data, demo_run, images, tmp_path
):
    # classes.json's human-readable labels (from a synsets file) are not the classes; stats.json's
    # provenance (the decoder's version) is not the statistics
    names = sorted(p.name for p in (images / "train").iterdir() if p.is_dir())
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("".join(f"{n} the {n} pattern\n" for n in names))
    data = tmp_path / "labelled"
    alexprep(
        "shard",
        images,
        data,
        "--size",
        32,
        "--shard-size",
        60,
        "--synsets",
        synsets,
        "--workers",
        1,
        "--quiet",
    )
    for name in ("stats.json", "mean_image.npy"):
        shutil.copy(demo_data / "shards" / name, data / name)
    stats = json.loads((data / "stats.json").read_text())
    stats["computed_from"]["decoder"] = "another OpenCV build"
    (data / "stats.json").write_text(json.dumps(stats))
    assert json.loads((data / "classes.json").read_text())[0]["label"] == f"the {names[0]} pattern"
    (mine,), (theirs,) = eval_rows(data, demo_run), eval_rows(demo_data / "shards", demo_run)
    assert mine == theirs | {"model": mine["model"]}


def test_resume_refuses_other_statistics_and_accepts_a_checkpoint_from_before_they_were_recorded(
    demo_data, demo_run, tmp_path
):
    restatted = tmp_path / "restatted"
    shutil.copytree(demo_data / "shards", restatted)
    alexprep("pca-stats", restatted, "--max-images", 5, "--workers", 1, "--quiet")
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    why = refused("run", "--out", run, "--resume", "--epochs", 3, "--data", restatted, "--quiet")
    assert "its statistics (stats.json" in why

    last = run / "last.pt"
    state = torch.load(last, weights_only=False)
    torch.save({**state, "dataset": None}, last)  # a record that is not one: refused, not skipped
    why = refused("run", "--out", run, "--resume", "--epochs", 3, "--data", demo_data / "shards", "--quiet")
    assert "the checkpoint's record of it is unreadable" in why
    # a checkpoint written before stats_sha256 was part of the fingerprint resumes as before
    assert state["dataset"].pop("stats_sha256") and state["dataset"].pop("class_names_sha256")
    torch.save(state, last)
    proc = alextrain(
        "run", "--out", run, "--resume", "--epochs", 3, "--data", demo_data / "shards", "--quiet"
    )
    assert "resuming at epoch 2" in proc.stdout and "done: epoch 2" in proc.stdout


def test_a_finished_run_resumed_with_fewer_epochs_changes_nothing(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = alextrain("run", "--out", run, "--resume", "--epochs", 1, "--quiet")
    assert proc.stdout.strip() == f"nothing to do: {run} has trained 2 epochs; --epochs 1 asks for none more"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # config.json too
    proc = alextrain("run", "--out", run, "--resume", "--quiet")  # its epochs are still its own
    assert proc.stdout.strip() == f"nothing to do: {run} has finished its 2 epochs"


def test_resume_names_the_given_setting_that_differs_not_one_it_implies(demo_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    why = refused("run", "--out", run, "--resume", "--arch", "alexnet", "--lr", 0.003, "--quiet")
    assert why.endswith(
        "--resume with other settings than the run's: arch (checkpoint 'cifar', now 'alexnet')\n"
    )


def test_a_run_resumed_after_a_drop_says_the_lr_it_goes_on_with(demo_data, tmp_path):
    run = tmp_path / "run"
    common = ("--out", run, "--num-threads", 1, "--quiet")
    alextrain(
        "run", "--data", demo_data / "shards", "--arch", "cifar", "--epochs", 2, "--global-batch", 16,
        "--lr", 0.003, "--schedule", "step", "--lr-steps", 1, "--steps-per-epoch", 2, *common,
    )  # fmt: skip
    proc = alextrain("run", "--resume", "--epochs", 3, *common)
    assert "resuming at epoch 2 step 0: global batch 16" in proc.stdout
    assert "lr 0.003, now 0.0003 after its drops" in proc.stdout


def test_images_stored_too_small_for_the_cifar_net_are_one_line(images, tmp_path):
    data = shard(images, tmp_path / "s8", 8)
    why = refused(
        "run", "--data", data, "--out", tmp_path / "run", "--arch", "cifar", "--epochs", 1, "--quiet"
    )
    assert "images stored at 8px; --arch cifar needs 16px or more" in why
    assert not (tmp_path / "run").exists()
