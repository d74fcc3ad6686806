"""`alextrain fig1`: Figure 1 under the paper's conditions (per-net lr sweep, no regularisation)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.loader import EvalLoader, TrainLoader
from tests.conftest import alexprep, alextrain, opts
from trainer.ablations import EXTEND, best_lr, common_level, epochs_to, ratio_lines, ratios


def test_epochs_to_target_and_the_ratio_or_its_lower_bound():
    rows = [{"epoch": e, "train_top1_err": err} for e, err in enumerate([0.7, 0.4, 0.24, 0.2])]
    assert epochs_to(rows, 0.25) == 3 and epochs_to(rows, 0.5) == 2 and epochs_to(rows, 0.1) is None
    relu = {"epochs_to_25pct_train_error": 3, "epochs_to_50pct_train_error": 2, "train_error": [0] * 4}
    tanh = {"epochs_to_25pct_train_error": None, "epochs_to_50pct_train_error": 8, "train_error": [0] * 12}
    r = ratios({"relu": relu, "tanh": tanh})
    assert r["tanh_over_relu_at_50pct"] == {"ratio": 4.0, "bound": "="}
    assert r["tanh_over_relu_at_25pct"] == {"ratio": 4.0, "bound": ">"}  # 12 epochs and not there
    short = {**tanh, "train_error": [0] * 3}  # stopped by epoch 3, where ReLU got there: no bound
    assert "tanh_over_relu_at_25pct" not in ratios({"relu": relu, "tanh": short})
    assert ratios({"relu": {**relu, "epochs_to_25pct_train_error": None}, "tanh": tanh})[
        "tanh_over_relu_at_50pct"
    ] == {"ratio": 4.0, "bound": "="}
    # the lowest level both reached: tanh's best 0.41 (epoch 6); ReLU was at or below it at epoch 2
    relu_err, tanh_err = [0.55, 0.40, 0.37, 0.30], [0.61, 0.50, 0.48, 0.45, 0.43, 0.41, 0.42]
    common = common_level(relu_err, tanh_err)
    assert common == {"level": 0.41, "relu": 2, "tanh": 6, "ratio": 3.0}
    assert common_level(tanh_err, relu_err) == {"level": 0.41, "relu": 6, "tanh": 2, "ratio": 2 / 6}
    both = ratios({"relu": {**relu, "train_error": relu_err}, "tanh": {**tanh, "train_error": tanh_err}})
    assert both["tanh_over_relu_at_common_level"] == common


def test_the_lrn_pair_gets_its_own_ratios_and_each_ratio_one_line():
    """relu-lrn/tanh-lrn is Figure 1 with LRN: its ratios sit beside the literal pair's, each
    printed once (the same lines in fig1's output and fig1.md)."""

    def net(to25: int | None, to50: int, epochs: int) -> dict:
        to = {"epochs_to_25pct_train_error": to25, "epochs_to_50pct_train_error": to50}
        return {**to, "train_error": [0.3] * epochs}

    relu, tanh, relu_lrn, tanh_lrn = net(34, 2, 40), net(None, 3, 40), net(7, 2, 15), net(35, 4, 40)
    only_literal = ratios({"relu": relu, "tanh": tanh, "relu-lrn": relu_lrn})
    assert not any(k.startswith("tanh_lrn") for k in only_literal)  # no tanh-lrn run: no LRN pair
    r = ratios({"relu": relu, "tanh": tanh, "relu-lrn": relu_lrn, "tanh-lrn": tanh_lrn})
    assert r["tanh_over_relu_at_25pct"] == {"ratio": 40 / 34, "bound": ">"}
    assert r["tanh_lrn_over_relu_lrn_at_25pct"] == {"ratio": 5.0, "bound": "="}
    assert r["tanh_lrn_over_relu_lrn_at_50pct"] == {"ratio": 2.0, "bound": "="}
    lines = ratio_lines({**r, "paper_ratio_at_25pct": 6.0})
    assert "tanh / relu epochs to 25 % training error: > 1.18" in lines
    assert "tanh-lrn / relu-lrn epochs to 25 % training error: 5.00" in lines
    assert lines[-1] == "paper, at 25 %: about 6" and len(lines) == len(set(lines))


def test_best_lr_is_the_lowest_training_error_and_never_a_diverged_run():
    rows = [
        {"lr": 0.003, "train_top1_err": 0.7, "diverged": False},
        {"lr": 0.01, "train_top1_err": 0.6, "diverged": False},
        {"lr": 0.03, "train_top1_err": 0.5, "diverged": True},
    ]
    assert best_lr(rows) == 0.01
    assert best_lr([{**r, "diverged": True} for r in rows]) is None


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
def small_cifar(cifar_root, tmp_path_factory) -> Path:
    """3 real CIFAR-10 classes, 256 train + 64 test images each: fig1's machinery in seconds."""
    src = tmp_path_factory.mktemp("small-src")
    for split, n in (("train", 256), ("test", 64)):
        for name in ("airplane", "cat", "frog"):
            (src / split / name).mkdir(parents=True)
            for f in sorted((cifar_root / split / name).iterdir())[:n]:
                (src / split / name / f.name).symlink_to(f)
    out = tmp_path_factory.mktemp("small") / "shards"
    alexprep("shard", src, out, "--size", 32, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    return out


@pytest.mark.slow
def test_fig1_sweeps_each_net_and_trains_under_the_papers_conditions(small_cifar, tmp_path):
    args = (
        "fig1",
        "--data",
        small_cifar,
        "--out",
        tmp_path,
        "--epochs",
        2,
        "--tanh-epochs",
        3,
        "--variants",
        "relu,tanh,relu-lrn,tanh-lrn",
        "--lrs",
        "0.001,0.01",
        "--sweep-steps",
        3,
        "--sweep-epochs",
        2,
        "--steps-per-epoch",
        4,
        "--num-threads",
        2,
        "--quiet",
    )
    proc = alextrain(*args)
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert set(summary["sweep"]["nets"]) == {"relu", "tanh"}  # relu-lrn takes relu's lr, tanh-lrn tanh's
    for net, s in summary["sweep"]["nets"].items():
        lrs = [r["lr"] for r in s["rows"]]
        assert {0.001, 0.01} <= set(lrs) and lrs == sorted(lrs)
        assert all(r["steps"] == 6 and r["epochs"] == 2 for r in s["rows"])  # 2 epochs of 3 steps
        for r in s["rows"]:  # judged on the last epoch's training error
            metrics = tmp_path / "sweep" / f"{net}-lr{r['lr']:g}" / "metrics.jsonl"
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            assert len(rows) == 2 and r["train_top1_err"] == rows[-1]["train_top1_err"]
        ok = [r for r in s["rows"] if not r["diverged"]]
        assert s["best_lr"] == min(ok, key=lambda r: r["train_top1_err"])["lr"]
        # a best at an end of the grid extends it by x3 there, up to EXTEND times
        assert len(lrs) <= 2 + EXTEND and (len(lrs) == 2 + EXTEND or lrs[0] < s["best_lr"] < lrs[-1])
        assert set(lrs) <= {0.0001, 0.0003, 0.001, 0.01, 0.03, 0.09}
        assert f"sweep {net}" in proc.stdout
    variants = summary["variants"]
    assert [len(variants[n]["train_error"]) for n in ("relu", "tanh", "relu-lrn", "tanh-lrn")] == [2, 3, 2, 3]
    for net in ("relu", "tanh"):
        assert variants[f"{net}-lrn"]["lr"] == variants[net]["lr"] == summary["sweep"]["nets"][net]["best_lr"]
    lrns = (("relu", "off"), ("tanh", "off"), ("relu-lrn", "cuda-convnet"), ("tanh-lrn", "cuda-convnet"))
    for name, lrn in lrns:
        cfg = json.loads((tmp_path / f"{name}-lr{variants[name]['lr']:g}" / "config.json").read_text())
        assert (cfg["lrn"], cfg["weight_decay"], cfg["mirror"], cfg["lighting"]) == (lrn, 0.0, False, "off")
        assert cfg["max_drops"] == 0 and cfg["lr"] == variants[name]["lr"] and cfg["arch"] == "cifar"
    assert Image.open(tmp_path / "fig1.png").size == (600, 400)
    assert "epochs to 25% train err" in proc.stdout
    assert "(fixed: --max-drops 0)" in proc.stdout and "plateau" not in proc.stdout  # Figure 1: one lr
    table = (tmp_path / "fig1.md").read_text()
    assert table.count("**chosen**") == 2 and f"| tanh | {variants['tanh']['lr']:g} | 3 |" in table
    # every run is on disk: a second call trains nothing and reports the same numbers
    again = alextrain(*args).stdout
    assert "global batch" not in again  # no run started
    assert again[again.index("sweep relu") :] == proc.stdout[proc.stdout.index("sweep relu") :]
    assert json.loads((tmp_path / "ablation.json").read_text()) == summary
    assert not list(Path(tmp_path).glob("**/.*.tmp"))
    assert table.startswith("Weights: paper init") and summary["conditions"]["init"] == "paper"

    # cuda-convnet's init, one lr (no sweep); the same folder with another init is refused, not mixed
    other = tmp_path / "ccn"
    quick = ("fig1", "--data", small_cifar, "--out", other, "--variants", "relu", "--lrs", "0.01")
    alextrain(
        *quick, "--epochs", 1, "--steps-per-epoch", 2, "--num-threads", 2, "--quiet", "--init", "cuda-convnet"
    )
    assert json.loads((other / "relu-lr0.01" / "config.json").read_text())["init"] == "cuda-convnet"
    assert (other / "fig1.md").read_text().startswith("Weights: cuda-convnet init")
    for epochs in (1, 2):  # a finished run is not re-reported as if it were this one, nor resumed
        refused = alextrain(*quick, "--epochs", epochs, "--steps-per-epoch", 2, "--quiet", check=False)
        assert refused.returncode == 2 and "init (checkpoint 'cuda-convnet', now 'paper')" in refused.stderr


@pytest.mark.slow  # over ~20 s on 2 cores
def test_fig1_user_errors(tmp_path):
    for flags, message in (
        (["--variants", "relu,sigmoid"], "--variants: unknown or none ['sigmoid']"),
        (["--lrs", "0.01,fast"], "--lrs: '0.01,fast' is not a comma-separated list of numbers"),
        (["--lrs", "0.01,-1"], "each learning rate must be in (0, 10)"),
    ):
        proc = alextrain("fig1", "--data", tmp_path, "--out", tmp_path / "o", *flags, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
