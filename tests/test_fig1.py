"""`alextrain fig1`: Figure 1's machinery on real CIFAR-10 shards at tiny settings: each net's lr
swept by the caption's criterion, seeds, named runs, flags, resume after a kill, and Figure 1's
input (no mirror, no lighting)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.loader import EvalLoader, TrainLoader
from shards import layout
from tests.conftest import alexprep, alextrain, extract_cifar, opts
from trainer import fig1_stats as stats
from trainer.cli import main as cli_main
from trainer.config import flatten


def _digests(batches) -> list[str]:  # noqa: ANN001
    return [hashlib.sha1(x.numpy().tobytes()).hexdigest() for xs, _ in batches for x in xs]


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_no_mirror_and_no_lighting_train_batches_are_the_plain_images(backend, cifar_root, tmp_path):
    """Figure 1's input: with mirror and lighting off (and the crop the whole 32px image), every
    training sample is exactly its eval image; with mirror on, about half are not."""
    src = tmp_path / "src" / "train" / "cat"
    src.mkdir(parents=True)
    for f in sorted((cifar_root / "train" / "cat").iterdir())[:64]:
        (src / f.name).symlink_to(f)
    out = tmp_path / "shards"
    alexprep("shard", tmp_path / "src", out, "--size", 32, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    opt = opts(batch_size=32, backend=backend, crop=32, lighting="off", num_threads=1, rank=0, world=1)
    plain = set(_digests(EvalLoader(out, *opt, split="train")))
    assert len(plain) == 64
    off = _digests(
        TrainLoader(
            out,
            *opts(
                batch_size=32,
                backend=backend,
                crop=32,
                lighting="off",
                num_threads=1,
                rank=0,
                world=1,
                mirror=False,
            ),
        ).epoch(0)
    )
    assert len(off) == 64 and set(off) <= plain
    on = _digests(TrainLoader(out, *opt).epoch(0))
    assert 10 < len(set(on) - plain) < 54  # mirrored ones: Binomial(64, 1/2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """3 real CIFAR-10 classes, 256 train + 64 test images each, streamed from the archive: few
    enough for seconds per run, easy enough that 8 steps leave chance behind."""
    src = extract_cifar(
        tmp_path_factory.mktemp("fig1-src"), {"train": 256, "test": 64}, ("airplane", "cat", "frog")
    )
    out = tmp_path_factory.mktemp("fig1-tiny") / "shards"
    alexprep("shard", src, out, "--size", 32, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    return out


ARGS = (
    ("--nets", "relu,relu-lrn,relu-scale", "--lrs", "0.00316,0.01", "--sweep-epochs", 2, "--epochs", 3),
    ("--seeds", 2, "--steps-per-epoch", 4, "--num-threads", 2, "--quiet"),
)


def _fig1(data: Path, out: Path, check: bool = True) -> subprocess.CompletedProcess:
    return alextrain("fig1", "--data", data, "--out", out, *ARGS[0], *ARGS[1], check=check)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("fig1") / "out"
    return out, _fig1(tiny, out).stdout


@pytest.mark.slow  # ~14 runs: minutes on 2 shared cores
def test_each_net_is_swept_by_the_criterion_then_trained_for_each_seed(straight, tiny):
    out, stdout = straight
    summary = json.loads((out / "ablation.json").read_text())
    assert summary["complete"] and summary["protocol"]["seeds"] == [1, 2]
    for net, lrn in (("relu", "off"), ("relu-lrn", "cuda-convnet"), ("relu-scale", "scale")):
        sweep = summary["sweep"][net]
        lrs = [p["lr"] for p in sweep["points"]]
        assert {0.00316, 0.01} <= set(lrs) and lrs == sorted(lrs) and len(lrs) <= 4
        for p in sweep["points"]:  # each point: seed 0, 2 epochs, read from its own run folder
            run = out / net / f"lr{p['lr']:g}-seed0"
            assert p["train_error"] == [r["train_top1_err"] for r in _rows(run)]
            assert len(p["train_error"]) == 2
            assert (
                f"fig1: {net}, sweep point lr {p['lr']:g}, seed 0: epochs 0-1 (numbered from 0) of 2"
                in stdout
            )
        ok = [p for p in sweep["points"] if p["flag"] is None]
        assert (
            sweep["chosen_lr"]
            == min(ok, key=lambda p: (*stats.sweep_rank(p["train_error"], 2), p["lr"]))["lr"]
        )
        result = summary["nets"][net]
        assert result["lr"] == sweep["chosen_lr"] and [r["seed"] for r in result["runs"]] == [1, 2]
        for r in result["runs"]:
            run = out / net / f"lr{result['lr']:g}-seed{r['seed']}"
            cfg = flatten(json.loads((run / "config.json").read_text()))
            assert (cfg["lrn"], cfg["activation"], cfg["seed"], cfg["lr"]) == (
                lrn,
                "relu",
                r["seed"],
                result["lr"],
            )
            assert (cfg["weight_decay"], cfg["mirror"], cfg["lighting"], cfg["max_drops"]) == (
                0.0,
                False,
                "off",
                0,
            )
            assert (
                r["train_error"] == [x["train_top1_err"] for x in _rows(run)] and len(r["train_error"]) == 3
            )
            assert (
                f"fig1: {net}, final lr {result['lr']:g}, seed {r['seed']}: epochs 0-2 (numbered from 0) of 3"
                in stdout
            )
        # seeds differ (init and data order), so the band has a width
        assert result["runs"][0]["train_error"] != result["runs"][1]["train_error"]
    # LRN vs none, LRN vs its gain alone, the gain alone vs none
    assert {k: (r["slow"], r["fast"]) for k, r in summary["ratios"].items()} == {
        "relu_over_relu_lrn": ("relu", "relu-lrn"),
        "relu_scale_over_relu_lrn": ("relu-scale", "relu-lrn"),
        "relu_over_relu_scale": ("relu", "relu-scale"),
    }
    assert "sweep relu (epochs to 25 % within 2, seed 0):" in stdout and "relu-scale lr" in stdout
    assert Image.open(out / "fig1.png").size == (600, 400)
    table = (out / "fig1.md").read_text()
    assert table.count("**chosen**") == 3 and "Final runs: seeds 1, 2 (3 epochs each" in table
    assert not list(out.glob("**/.*.tmp"))


@pytest.mark.slow  # ~14 runs again
def test_killed_fig1_resumes_to_the_same_numbers_and_a_finished_one_only_rereads(straight, tiny, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer.cli", "fig1", "--data", str(tiny), "--out", str(out)]
    cmd += [str(a) for a in (*ARGS[0], *ARGS[1])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    started = 0
    for line in proc.stdout:  # kill -9 once the third run has started: two are done, one is half
        started += line.startswith("starting:")
        if started == 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    again = _fig1(tiny, out).stdout
    assert "fig1: relu, sweep point lr 0.00316, seed 0: 2 epochs done, read back" in again
    straight_out, straight_stdout = straight
    mine, theirs = (json.loads((d / "ablation.json").read_text()) for d in (out, straight_out))
    assert mine["sweep"] == theirs["sweep"] and mine["nets"] == theirs["nets"]
    tail = lambda s: s[s.index("sweep relu (") : s.index("wrote ")]  # noqa: E731 (not the paths)
    assert tail(again) == tail(straight_stdout)
    third = _fig1(tiny, out).stdout  # everything on disk: nothing trains
    assert "starting:" not in third and "resuming" not in third and tail(third) == tail(again)


@pytest.mark.slow  # reads back ~14 runs, trains one again
def test_records_copied_without_checkpoints_continue_and_an_unfinished_one_is_trained_again(
    straight, tiny, tmp_path
):
    """As docs/figures.md says of its records (config.json and metrics.jsonl): copied into a new
    OUT they are read back, and a run with fewer epochs than asked has no checkpoint to go on
    from, so it is trained again (it was refused as a run that lost its last.pt)."""
    straight_out, _ = straight
    out = tmp_path / "out"
    for run in straight_out.glob("*/lr*-seed*"):
        dest = out / run.relative_to(straight_out)
        dest.mkdir(parents=True)
        for name in ("config.json", "metrics.jsonl"):
            shutil.copy(run / name, dest / name)
    lr = json.loads((straight_out / "ablation.json").read_text())["nets"]["relu"]["lr"]
    short = out / "relu" / f"lr{lr:g}-seed2"
    whole = (short / "metrics.jsonl").read_text().splitlines(keepends=True)
    (short / "metrics.jsonl").write_text("".join(whole[:2]))
    again = _fig1(tiny, out).stdout
    assert "relu, final lr" in again and "2 epochs recorded, no last.pt to go on from: trained again" in again
    assert again.count("starting:") == 1, again
    timing = ("img_per_s", "train_seconds")
    retrained = [{k: v for k, v in r.items() if k not in timing} for r in _rows(short)]
    assert retrained == [{k: v for k, v in json.loads(r).items() if k not in timing} for r in whole]


@pytest.mark.slow  # reads back ~14 runs, and one more small shard
def test_a_damaged_or_foreign_run_is_restored_or_refused_never_read_back_short(straight, tiny, tmp_path):
    """What fig1 reads back is what was trained, on this data, under these settings: a kill
    between the last epoch's checkpoint and its metrics line (or a torn file) is restored from
    last.pt; a run with no config.json or from another dataset is refused, not mixed in."""
    straight_out, _ = straight
    out = tmp_path / "out"
    shutil.copytree(straight_out, out)
    summary = json.loads((straight_out / "ablation.json").read_text())
    lr = summary["nets"]["relu"]["lr"]
    final, point = out / "relu" / f"lr{lr:g}-seed1", out / "relu-lrn" / "lr0.01-seed0"
    whole = (final / "metrics.jsonl").read_text()
    (final / "metrics.jsonl").write_text(whole[: whole.rindex("{")])  # its last epoch's line lost
    (point / "metrics.jsonl").write_text("")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a dead writer's half-written checkpoint in a finished run: removed on read-back
    stale = [out / "relu" / f"lr{lr:g}-seed2" / f".last.pt.{layout._host()}.{gone.pid}.x1.tmp"]
    stale.append(final / f".best.pt.{layout._host()}.{gone.pid}.x2.tmp")  # read back through `run`
    for f in stale:
        f.write_bytes(b"half")
    again = _fig1(tiny, out).stdout
    assert not any(f.exists() for f in stale)
    assert again.count("rewritten from last.pt's record of its epochs") == 2, again
    assert (final / "metrics.jsonl").read_text() == whole and "starting:" not in again
    assert json.loads((out / "ablation.json").read_text())["nets"] == summary["nets"]

    (point / "config.json").unlink()
    proc = _fig1(tiny, out, check=False)
    assert proc.returncode == 2 and "has metrics.jsonl but no config.json" in proc.stderr, proc.stderr
    shutil.rmtree(point)

    src = extract_cifar(tmp_path / "src", {"train": 128, "test": 32}, ("airplane", "cat", "frog"))
    other = tmp_path / "other"  # the same classes and size, other images
    alexprep("shard", src, other, "--size", 32, "--quiet")
    alexprep("pca-stats", other, "--quiet")
    proc = _fig1(other, out, check=False)
    assert proc.returncode == 2 and "trained on other data: the dataset (" in proc.stderr, proc.stderr
    proc = _fig1(other, other / "train" / "fig1", check=False)  # among the shards: before any mkdir
    assert proc.returncode == 2 and "is the dataset folder or one of its splits" in proc.stderr, proc.stderr
    assert not (other / "train" / "fig1").exists()


@pytest.mark.slow  # ~15 s on 2 cores
def test_diverged_sweep_points_are_flagged_and_never_chosen(tiny, tmp_path):
    args = ["fig1", "--data", tiny, "--out", tmp_path, "--nets", "relu", "--lrs", "3,9"]
    proc = alextrain(*args, "--sweep-epochs", 1, "--steps-per-epoch", 2, "--num-threads", 2, "--quiet")
    summary = json.loads((tmp_path / "ablation.json").read_text())
    points = summary["sweep"]["relu"]["points"]
    assert all(p["flag"] in ("diverged", "at chance") for p in points), points
    assert summary["sweep"]["relu"]["chosen_lr"] is None and summary["nets"] == {}
    assert (
        "never chosen" in proc.stdout
        and "relu: every sweep point diverged or stayed at chance" in proc.stdout
    )
    assert f"{points[0]['lr']:g}: {points[0]['flag'].upper()}" in proc.stdout


@pytest.mark.slow  # ~20 s on 2 cores
def test_a_diverged_final_run_is_recorded_and_the_next_seed_still_runs(tiny, tmp_path):
    """A seed whose loss or predictions stop being finite must not stop a run of many hours (a
    re-run would replay the same steps to the same NaN): it is marked, counted as not reaching
    any level, left out of the band, and read back as such."""
    args = ["fig1", "--data", tiny, "--out", tmp_path, "--nets", "relu", "--lrs", "9.9", "--seeds", 2]
    args += ["--epochs", 2, "--steps-per-epoch", 4, "--num-threads", 2, "--quiet"]
    proc = alextrain(*args)
    summary = json.loads((tmp_path / "ablation.json").read_text())
    relu = summary["nets"]["relu"]
    assert summary["complete"] and [r["seed"] for r in relu["runs"]] == [1, 2]
    assert relu["diverged_seeds"] == [1, 2] and proc.stdout.count("DIVERGED: ") == 2
    assert all((tmp_path / "relu" / f"lr9.9-seed{s}" / "DIVERGED.json").is_file() for s in (1, 2))
    assert relu["epochs_to"]["0.50"]["reached"] == 0
    assert "(diverged: 1,2)" in (tmp_path / "fig1.md").read_text()
    again = alextrain(*args).stdout
    assert "starting:" not in again and again.count("diverged before, read back") == 2


def test_fig1_user_errors_are_one_line_before_any_work(tmp_path):
    for flags, message in (
        (["--nets", "relu,sigmoid"], "--nets: unknown or none ['sigmoid']"),
        (["--nets", "relu,relu"], "--nets: relu, relu names a net twice"),
        (["--lrs", "0.01,fast"], "--lrs: '0.01,fast' is not a comma-separated list of numbers"),
        (["--lrs", "0.01,-1"], "each learning rate must be in (0, 10)"),
        (
            ["--lrs", "0.001,0.01"],
            "--lrs: 0.001 -> 0.01 is a step of 10.00x; the grid steps by at most sqrt(10)",
        ),
        (["--lrs", "0.01,0.0100000001"], "--lrs: 0.01 and 0.0100000001 would share the run folder lr0.01"),
    ):
        args = ["fig1", "--data", str(tmp_path), "--out", str(tmp_path / "o"), *flags]
        result = CliRunner().invoke(cli_main, args)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


def test_fig1_out_that_is_a_file_or_holds_a_folder_for_its_output_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "o" / "fig1.md").mkdir(parents=True)
    for out, message in ((tmp_path / "afile", "exists and is not a folder"),
                         (tmp_path / "afile" / "sub", "a parent of it is a file"),
                         (tmp_path / "o", "is a folder; fig1 writes its fig1.md there"),
                         (tmp_path / "data", "is the dataset folder or one of its splits")):  # fmt: skip
        result = CliRunner().invoke(cli_main, ["fig1", "--data", str(tmp_path / "data"), "--out", str(out)])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1


def test_fig1_with_fewer_nets_than_the_summary_in_out_says_so_up_front(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "ablation.json").write_text(json.dumps({"protocol": {"nets": ["relu", "tanh"]}}))
    result = CliRunner().invoke(
        cli_main, ["fig1", "--data", str(tmp_path / "data"), "--out", str(out), "--nets", "relu"]
    )
    assert f"fig1: {out}: its summary had tanh too; this one will not (their runs stay: --nets relu,tanh" in (
        result.stdout
    )


def test_fig1_without_matplotlib_stops_before_training(tmp_path, monkeypatch):
    """Hours of training and then no figure: refused at once, naming the extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = ["fig1", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli_main, args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "matplotlib is not installed; pip install 'alexnet2012[figures]'" in result.stderr
    assert not (tmp_path / "o").exists()
