"""The paper's global batch (section 5: 128 images per step, all processes together) at any
process count, the large-batch recipe, and --precision as a run setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import alexprep, alextrain
from trainer.config import ConfigError, TrainConfig
from trainer.distributed import per_process_batch
from trainer.errors import TrainError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exactly_128(tmp_path_factory) -> Path:
    """128 random 16px images in 4 classes: at global batch 128 the first step's batch is the whole
    split whatever the process count, so every count must make the same update."""
    root = tmp_path_factory.mktemp("g128")
    rng = np.random.default_rng(0)
    for i in range(128):
        d = root / "src" / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:03d}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    alexprep("shard", root / "src", root / "out", "--size", 16, "--shard-size", 16, "--quiet")
    alexprep("pca-stats", root / "out", "--quiet")
    return root / "out"


def _run(data: Path, out: Path, procs: int) -> subprocess.CompletedProcess:
    args = ["--data", data, "--out", out, "--arch", "cifar", "--crop", 16, "--epochs", 1]
    args += ["--lighting", "off", "--no-mirror", "--schedule", "step", "--lr-steps", 1, "--lr", 0.1]
    args += ["--num-threads", 1, "--quiet", "--loader", "dali"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    cmd += ["-m", "trainer.cli", "run", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # three torchrun launches, up to 4 processes on 2 cores
def test_the_same_global_batch_makes_the_same_first_update_on_1_2_and_4_processes(exactly_128, tmp_path):
    weights = {}
    for procs in (1, 2, 4):
        proc = _run(exactly_128, tmp_path / f"p{procs}", procs)
        assert proc.returncode == 0, proc.stderr[-3000:]
        share = 128 // procs
        assert f"global batch 128 ({share} per process x {procs})" in proc.stdout
        state = torch.load(tmp_path / f"p{procs}" / "last.pt", weights_only=True)
        assert state["step"] == 1
        weights[procs] = state["model"]
    for procs in (2, 4):
        for k, w in weights[1].items():
            torch.testing.assert_close(weights[procs][k], w, rtol=1e-5, atol=1e-6, msg=f"{procs} procs, {k}")
    init = torch.load(tmp_path / "p1" / "last.pt", weights_only=True)["optimizer"]["state"]
    moved = sum(float(s["velocity"].abs().sum()) for s in init.values())
    assert moved > 0


def test_an_indivisible_global_batch_is_refused_naming_both_counts():
    assert per_process_batch(128, 4) == 32
    with pytest.raises(
        TrainError, match=r"--global-batch \(global_batch\) = 128: does not split evenly over 3"
    ):
        per_process_batch(128, 3)


def test_large_batch_recipe_scales_and_warms_the_lr():
    from trainer.train import warmup_lr

    cfg = TrainConfig.of(global_batch=1024, lr_scaling="linear", warmup_epochs=5, lr=0.01)
    assert cfg.optim.base_lr() == pytest.approx(0.08)  # Goyal et al.: x 1024 / 128
    assert warmup_lr(cfg, 0, 100, 0.08) == pytest.approx(0.01)
    assert warmup_lr(cfg, 250, 100, 0.08) == pytest.approx(0.045)
    assert warmup_lr(cfg, 500, 100, 0.08) == 0.08
    assert TrainConfig.of(global_batch=1024).optim.base_lr() == 0.01  # no scaling unless asked
    with pytest.raises(ConfigError, match=r"--warmup-epochs \(warmup_epochs\) = 90: must be fewer"):
        TrainConfig.of(warmup_epochs=90).check()
    # a ramp to where it started (no scaling) or down (a batch under 128) is no warm-up: refused
    linear = {"lr_scaling": "linear"}
    for kw in ({"global_batch": 1024}, {"global_batch": 16, **linear}, linear):
        with pytest.raises(ConfigError, match=r"= 1: ramps from --lr up to the linearly scaled lr"):
            TrainConfig.of(warmup_epochs=1, **kw).check()


def test_warm_up_epochs_record_the_lr_their_steps_took(tmp_path):
    """metrics.jsonl gave a warm-up epoch the lr it ramps to, not the lrs its steps used."""
    rng = np.random.default_rng(1)
    for i in range(320):
        d = tmp_path / "src" / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:03d}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    alexprep("shard", tmp_path / "src", tmp_path / "data", "--size", 16, "--quiet")
    alexprep("pca-stats", tmp_path / "data", "--quiet")
    out = tmp_path / "run"
    alextrain(
        "run", "--data", tmp_path / "data", "--out", out, "--arch", "cifar", "--crop", 16, "--epochs", 2,
        "--global-batch", 160, "--lr-scaling", "linear", "--warmup-epochs", 1, "--schedule", "step",
        "--lr-steps", 5, "--num-threads", 1, "--quiet",
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 2 steps per epoch; lr 0.01 x 160/128 = 0.0125, reached at step 2 from 0.01
    assert rows[0]["lr"] == pytest.approx(0.0125) and rows[0]["lr_warmup"] == pytest.approx([0.01, 0.01125])
    assert rows[1]["lr"] == pytest.approx(0.0125) and "lr_warmup" not in rows[1]


def test_lighting_scale_div_without_lighting_is_refused_before_any_work(tmp_path):
    # before the dataset is even read: the folder does not exist
    proc = alextrain(
        "run", "--data", tmp_path / "none", "--out", tmp_path / "run", "--lighting", "off",
        "--lighting-scale-div", 1.1, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "--lighting-scale-div" in err and "--lighting (lighting)" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # the full-size net at 224 and 227
def test_the_default_config_builds_a_model_for_its_own_input_size():
    from trainer.model import build_model

    for cfg in (TrainConfig(), TrainConfig.of(crop=227), TrainConfig.of(arch="cifar")):
        m = cfg.model
        out = build_model(m)(torch.zeros(1, 3, m.input_size, m.input_size))
        assert out.shape == (1, m.classes)


@pytest.mark.slow
def test_precision_is_recorded_and_refused_on_resume_when_changed(exactly_128, tmp_path):
    out = tmp_path / "run"
    args = ["--data", exactly_128, "--out", out, "--arch", "cifar", "--crop", 16, "--global-batch", 32]
    args += ["--schedule", "step", "--lr-steps", 1, "--num-threads", 1, "--quiet", "--epochs", 1]
    alextrain("run", *args, "--precision", "bf16")  # bf16 autocast runs on the CPU too
    assert json.loads((out / "config.json").read_text())["run"]["precision"] == "bf16"
    proc = alextrain("run", *args, "--epochs", 2, "--resume", "--precision", "fp32", check=False)
    assert proc.returncode == 2 and "precision (checkpoint 'bf16', now 'fp32')" in proc.stderr
