"""Shared fixtures: the real data in ../shared/data, and shard sets made from it once per run."""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
from pathlib import Path
from subprocess import CompletedProcess

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGENET = SHARED / "imagenet-samples"
CIFAR_TGZ = SHARED / "cifar10-jpeg.tar.gz"


def imagenet_files() -> list[str]:
    if not IMAGENET.is_dir():
        pytest.skip(f"{IMAGENET} not present")
    return sorted(p.name for p in IMAGENET.glob("*.JPEG"))


def write_labels(path: Path, names: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "label"])
        for n in names:
            w.writerow([n, n.split("_", 1)[0]])
    return path


def _cli(module: str, args: tuple, check: bool) -> subprocess.CompletedProcess:
    """Run a real CLI in a subprocess, as a user would."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def alexprep(*args: object, check: bool = True, real_process: bool = False) -> CompletedProcess:
    """`alexprep ARGS`, in this process as `alextrain` is (a fresh interpreter costs ~0.7 s of
    imports per call), or as a real process where that is the point (signals, locks held by
    another process, what a fresh interpreter imports)."""
    if real_process:
        return _cli("preprocess.cli", args, check)
    return _in_process("preprocess.cli", args, check)


@pytest.fixture(scope="session")
def imagenet_labels(tmp_path_factory) -> Path:
    return write_labels(tmp_path_factory.mktemp("labels") / "labels.csv", imagenet_files())


@pytest.fixture(scope="session")
def imagenet_shards(tmp_path_factory, imagenet_labels) -> Path:
    """The 1,000 real ImageNet samples at 256px, 4 shards of up to 256 (the reference run)."""
    out = tmp_path_factory.mktemp("imagenet") / "shards"
    alexprep(
        "shard", IMAGENET, out, "--labels", imagenet_labels, "--shard-size", 256, "--workers", 2, "--quiet"
    )
    return out


@pytest.fixture(scope="session")
def imagenet_with_stats(imagenet_shards, tmp_path_factory) -> Path:
    """A copy of the ImageNet shards with pca-stats run on it (the original stays untouched)."""
    import shutil

    out = tmp_path_factory.mktemp("imagenet-stats") / "shards"
    shutil.copytree(imagenet_shards, out)
    alexprep("pca-stats", out, "--quiet")
    return out


@pytest.fixture(scope="session")
def imagenet_64(tmp_path_factory) -> Path:
    """The first 64 real ImageNet samples (one per class) at 256 px in one shard, with pca-stats:
    the fast tier's real photographs (all 1,000 take ~5 s: `imagenet_with_stats`, slow tier)."""
    tmp = tmp_path_factory.mktemp("imagenet-64")
    labels = write_labels(tmp / "labels.csv", imagenet_files()[:64])
    out = tmp / "shards"
    alexprep("shard", IMAGENET, out, "--labels", labels, "--shard-size", 64, "--workers", 1, "--quiet")
    alexprep("pca-stats", out, "--workers", 1, "--quiet")
    return out


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    if not CIFAR_TGZ.is_file():
        pytest.skip(f"{CIFAR_TGZ} not present")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(CIFAR_TGZ) as tf:
        tf.extractall(root, filter="data")
    return root / "cifar10"


@pytest.fixture(scope="session")
def cifar_shards(tmp_path_factory, cifar_root) -> Path:
    """CIFAR-10 (50,000 train + 10,000 test, real JPEGs) as 32px shards."""
    out = tmp_path_factory.mktemp("cifar-shards") / "shards"
    alexprep("shard", cifar_root, out, "--size", 32, "--shard-size", 5000, "--quiet")
    return out


def alextrain(*args: object, check: bool = True, real_process: bool = False) -> CompletedProcess:
    """`alextrain ARGS`: in this process by click's CliRunner (torch is imported once, not per
    call), or with `subprocess=True` as a real process where that is the point (signals, exit
    codes of a dying process, what a fresh interpreter imports)."""
    if real_process:
        return _cli("trainer.cli", args, check)
    return _in_process("trainer.cli", args, check)


def _in_process(module: str, args: tuple, check: bool) -> CompletedProcess:
    import importlib
    import traceback
    import warnings

    from click.testing import CliRunner

    main = importlib.import_module(module).main
    argv = [str(a) for a in args]

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    formatwarning = warnings.formatwarning  # the CLI sets its one-line format for its own run
    with warnings.catch_warnings():  # printed as a fresh process would, not recorded by pytest
        warnings.simplefilter("default")
        warnings.showwarning = show
        try:
            result = CliRunner().invoke(main, argv, prog_name=module.split(".")[0])
        finally:
            warnings.formatwarning = formatwarning
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # as Python would print it
    proc = CompletedProcess([module, *argv], result.exit_code, result.stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def cifar_ready(cifar_shards) -> Path:
    """CIFAR-10 shards with their pca-stats."""
    if not (cifar_shards / "stats.json").exists():
        alexprep("pca-stats", cifar_shards, "--quiet")
    return cifar_shards


@pytest.fixture(scope="session")
def cifar_run(cifar_ready, tmp_path_factory) -> Path:
    """One real epoch of the small CIFAR net with the paper's recipe (about a minute on 2 cores)."""
    run = tmp_path_factory.mktemp("cifar-run") / "run"
    alextrain(
        "run",
        "--data",
        cifar_ready,
        "--out",
        run,
        "--arch",
        "cifar",
        "--crop",
        32,
        "--epochs",
        1,
        "--num-threads",
        2,
        "--quiet",
    )
    return run


CIFAR_TINY = {"train": 24, "test": 8}  # images per class and split


def extract_cifar(src: Path, per_split: dict[str, int], classes: tuple[str, ...] | None = None) -> Path:
    """The first `per_split[split]` images of each class (of `classes`, or all) into
    SRC/<split>/<class>/, streamed from the archive rather than all 60,000 extracted."""
    if not CIFAR_TGZ.is_file():
        pytest.skip(f"{CIFAR_TGZ} not present")
    with tarfile.open(CIFAR_TGZ) as tf:
        for m in tf:
            parts = Path(m.name).parts  # cifar10/<split>/<class>/0123.jpg
            if not (m.isfile() and len(parts) == 4) or (classes and parts[2] not in classes):
                continue
            if int(parts[3][:4]) < per_split.get(parts[1], 0):
                dest = src.joinpath(*parts[1:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tf.extractfile(m).read())
    return src


@pytest.fixture(scope="session")
def cifar_tiny_src(tmp_path_factory) -> Path:
    """The first CIFAR_TINY images of each CIFAR-10 class: real photographs, few enough for
    seconds per training run."""
    return extract_cifar(tmp_path_factory.mktemp("cifar-tiny") / "src", CIFAR_TINY)


def shard_with_stats(src: Path, out: Path) -> Path:
    alexprep("shard", src, out, "--size", 32, "--shard-size", 60, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    return out


@pytest.fixture(scope="session")
def cifar_tiny(cifar_tiny_src, tmp_path_factory) -> Path:
    """`cifar_tiny_src` (train + test) at 32 px in shards of 60, with pca-stats."""
    return shard_with_stats(cifar_tiny_src, tmp_path_factory.mktemp("cifar-tiny") / "shards")


@pytest.fixture(scope="session")
def cifar_tiny_train_only(cifar_tiny_src, tmp_path_factory) -> Path:
    """The same without a held-out split."""
    import shutil

    src = tmp_path_factory.mktemp("cifar-tiny-train") / "src"
    shutil.copytree(cifar_tiny_src / "train", src / "train")
    return shard_with_stats(src, src.parent / "shards")


# Fixtures that cost seconds to minutes on 2 cores: all 1,000 ImageNet samples at 256 px, all of
# CIFAR-10 extracted and sharded (60,000 images), and the trained runs (a test that needs a
# trained model trains). A test that needs one is in the slow tier whatever its own cost.
SLOW_FIXTURES = {
    *("imagenet_shards", "imagenet_with_stats", "cifar_root", "cifar_shards", "cifar_ready"),
    *("cifar_run", "demo_run", "tiny_run", "trained"),
}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """Mark tests using SLOW_FIXTURES `slow`, so `pytest -m "not slow"` stays under a minute."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def opts(**kw: object) -> tuple:
    """(LoaderConfig, Feed) from one set of keywords: `TrainLoader(data, *opts(batch_size=4, ...))`."""
    from dataclasses import fields

    from pipeline.loader import Feed, LoaderConfig

    feed = {f.name for f in fields(Feed)}
    return LoaderConfig(**{k: v for k, v in kw.items() if k not in feed}), Feed(
        **{k: v for k, v in kw.items() if k in feed}
    )


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo's drawn images, small (10 classes x 12 train + 4 val; preprocess.demo), sharded at
    32 px with pca-stats: a labelled set with real structure that needs nothing from ../shared."""
    from click.testing import CliRunner

    from preprocess.cli import main
    from preprocess.demo import make_images

    root = tmp_path_factory.mktemp("demo")
    make_images(root / "images", 12, 4, seed=1)
    shards = root / "shards"
    for args in (
        ["shard", root / "images", shards, "--size", 32, "--shard-size", 60, "--workers", 1, "--quiet"],
        ["pca-stats", shards, "--workers", 1, "--quiet"],
    ):
        result = CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return root


@pytest.fixture(scope="session")
def demo_run(demo_data) -> Path:
    """Two epochs of the small CIFAR net on `demo_data` (in this process: one torch import)."""
    from click.testing import CliRunner

    from trainer.cli import main

    run = demo_data / "run"
    args = ["run", "--data", demo_data / "shards", "--out", run, "--arch", "cifar", "--epochs", 2]
    args += ["--global-batch", 16, "--lr", 0.003, "--num-threads", 1, "--quiet"]
    result = CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (demo_data / "run.log").write_text(result.output)  # what the user saw (tests/test_report.py)
    return run


def doubled_logits(src: Path, dst: Path) -> Path:
    """Another model with the same predictions: the cifar net of checkpoint `src` with its last
    layer scaled by 2, so every logit doubles. The classes keep their order, so top-1/top-5 of
    it, and of its average with `src`, are `src`'s: an ensemble with a known answer (eval
    refuses one model given twice)."""
    import torch

    state = torch.load(src, weights_only=True)
    for k in ("fc.weight", "fc.bias"):
        state["model"][k] = state["model"][k] * 2
    torch.save(state, dst)
    return dst
