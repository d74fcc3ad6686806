"""The one-GPU check's CPU dry run: every row's code path, start to finish, so it cannot rot.

A GPU session is short and rare; a check script that breaks between two of them wastes one.
`bash bench/gpu_check.sh --device cpu` runs the same logic at toy sizes (cifar net, batch 4).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import alexprep

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "decode (CPU: no hardware decoder)",
    "loader: pipeline start",
    "loader: steady img/s",
    "loader: epoch boundary gap, next epoch started ahead",
    "loader: epoch boundary gap, old",
    "eval: pass start, kept pipeline",
    "train: synthetic input",
    "train: DALI input",
    "train: DALI / synthetic",
    "train: fp32 vs bf16 step",
    "two towers placed on [dev, dev]",
    "LRN bf16 vs fp32 (trainer.model.lrn_bf16_agreement)",
    "alextrain run killed at step 3, --resume",
    "alextrain eval of last.pt",
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """24 training and 8 validation images at 32px, 4 classes, shards of 4, with pca-stats."""
    root = tmp_path_factory.mktemp("gpu-check")
    rng = np.random.default_rng(2)
    for split, n in (("train", 24), ("val", 8)):
        for i in range(n):
            d = root / "src" / split / f"c{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 255, (32, 32, 3), np.uint8))
    alexprep("shard", root / "src", root / "shards", "--size", 32, "--shard-size", 4, "--quiet")
    alexprep("pca-stats", root / "shards", "--quiet")
    return root / "shards"


@pytest.mark.slow  # ~40 s on 2 cores: three `alextrain` processes, a bench set, two trainings
def test_the_gpu_check_dry_run_prints_every_row(toy, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_DATA": str(toy), "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--device", "cpu", "--threads", "2", "--work", str(tmp_path / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "table.txt").read_text()
    assert 0 <= proc.stdout.find("imports: ok (") < proc.stdout.find("== ")  # checked before any work
    for name in ROWS:
        assert name in table, (name, table)
    assert "FAILED" not in table and "WRONG" not in table
    run = next(ln for ln in table.splitlines() if ln.startswith("alextrain run killed at step 3"))
    assert "ok: resuming at epoch 0 step 2" in run  # killed after step 3, resumed from step 2's checkpoint


@pytest.mark.slow  # fresh interpreters
def test_a_missing_module_is_named_in_one_line_before_any_work(toy, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys; sys.argv = ['gpu_check', '--data', sys.argv[1], '--device', 'cpu'];"
        "import bench.gpu_check as g; g.MODULES.append('no_such_module_x'); g.main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(toy)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert lines == [
        "gpu_check: cannot import: no_such_module_x (ModuleNotFoundError: No module named 'no_such_module_x')"
    ]
    assert not (tmp_path / "gpu-out").exists()  # nothing made before the check


@pytest.mark.slow  # a fresh interpreter
def test_a_relative_data_path_is_the_callers_and_a_missing_one_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--data", "nope", "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]  # the path made absolute from the caller's folder
    assert last == f"gpu_check.py: error: --data {tmp_path.resolve() / 'nope'}: no such folder"
    assert "Traceback" not in proc.stderr and not (tmp_path / "gpu-out").exists()


def test_train_throughput_checks_its_arguments_before_the_benchmark(tmp_path):
    """--json DIR ended the whole benchmark with IsADirectoryError at its last line (a probe)."""
    script = str(ROOT / "bench" / "train_throughput.py")
    for args, said in (
        (["--json", str(tmp_path)], f"argument --json: {tmp_path}: is a folder"),
        (["--json", str(tmp_path / "no" / "x.json")], f"no folder {tmp_path / 'no'}"),
        (["--steps", "0"], "argument --steps: 0 must be >= 1"),
    ):
        cmd = [sys.executable, script, "--data", str(tmp_path), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
