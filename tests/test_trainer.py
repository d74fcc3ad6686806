"""Training: the paper's update rule and schedule, real learning, resume, DDP, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from tests.conftest import alextrain, doubled_logits
from trainer import checkpoint
from trainer.model import ModelConfig, build_model
from trainer.optim import PaperSGD, PlateauSchedule


def test_update_rule_by_hand_across_an_lr_change():
    w0, g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25]), torch.tensor([-1.0, 2.0])
    w = nn.Parameter(w0.clone())
    opt = PaperSGD([w], lr=0.01, momentum=0.9, weight_decay=0.0005)
    w.grad = g1.clone()
    opt.step()
    v1 = -0.0005 * 0.01 * w0 - 0.01 * g1
    assert torch.allclose(w.data, w0 + v1, atol=1e-12)
    opt.param_groups[0]["lr"] = 0.001  # divided by 10
    w.grad = g2.clone()
    opt.step()
    v2 = 0.9 * v1 - 0.0005 * 0.001 * (w0 + v1) - 0.001 * g2
    assert torch.allclose(w.data, w0 + v1 + v2, atol=1e-12)
    # torch.optim.SGD rescales the whole velocity at the lr change: a different trajectory
    u = nn.Parameter(w0.clone())
    sgd = torch.optim.SGD([u], lr=0.01, momentum=0.9, weight_decay=0.0005)
    u.grad = g1.clone()
    sgd.step()
    assert torch.allclose(u.data, w0 + v1, atol=1e-7)  # same while the lr is constant
    sgd.param_groups[0]["lr"] = 0.001
    u.grad = g2.clone()
    sgd.step()
    assert not torch.allclose(u.data, w.data, atol=1e-6)


def test_plateau_schedule_drops_at_most_three_times():
    s = PlateauSchedule(lr=0.01, patience=2)
    drops = [s.update(e) for e in [0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]]
    assert sum(drops) == 3 and s.lr == pytest.approx(1e-5)


def test_cifar_learns_far_above_chance(cifar_run):
    rows = [json.loads(line) for line in (cifar_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["val_top1_err"] < 0.65  # chance is 0.90; the paper's recipe does train
    assert rows[0]["train_loss"] < 2.0  # ln 10 = 2.30 at the start
    state = torch.load(cifar_run / "last.pt", weights_only=True)
    assert set(state) == checkpoint.KEYS | {"backend"}


def test_eval_ten_crop_and_ensemble(cifar_run, cifar_ready, tmp_path):
    ck = cifar_run / "last.pt"
    metrics = json.loads((cifar_run / "metrics.jsonl").read_text().splitlines()[-1])
    proc = alextrain("eval", "--data", cifar_ready, "--checkpoint", ck, "--json-out", tmp_path / "ten.json")
    ten = json.loads((tmp_path / "ten.json").read_text())
    assert ten["ten_crop"] and ten["rows"][0]["samples"] == 10000 and "top-1 err" in proc.stdout
    assert abs(ten["rows"][0]["top1_err"] - metrics["val_top1_err"]) < 0.05  # 10-crop ~ centre crop
    twin = doubled_logits(ck, tmp_path / "twin.pt")
    proc = alextrain("eval", "--data", cifar_ready, "--checkpoint", ck, "--checkpoint", twin,
                     "--centre-crop", "--json-out", tmp_path / "two.json")  # fmt: skip
    assert "average of 2" in proc.stdout
    single, other, avg = json.loads((tmp_path / "two.json").read_text())["rows"]
    assert single["top1_err"] == pytest.approx(metrics["val_top1_err"])  # eval agrees with training
    for k in ("top1_err", "top5_err"):  # the same ranking of classes: the same errors
        assert other[k] == pytest.approx(single[k], abs=2e-4) and avg[k] == pytest.approx(single[k], abs=2e-4)
    assert other["loss"] != pytest.approx(single["loss"])  # another model all the same


def _metrics(run) -> list[dict]:
    drop = ("img_per_s", "train_seconds")
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_kill_and_resume_gives_the_same_metrics(cifar_ready, tmp_path):
    args = [
        "--data",
        cifar_ready,
        "--arch",
        "cifar",
        "--crop",
        28,
        "--epochs",
        3,
        "--steps-per-epoch",
        25,
        "--num-threads",
        2,
        "--quiet",
    ]
    alextrain("run", "--out", tmp_path / "straight", *args)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "trainer.cli", "run", "--out", str(killed), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["epoch"] < 2, "the kill should land before the end"
    again = alextrain("run", "--out", killed, *args, check=False)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently overwrite a run
    alextrain("run", "--out", killed, *args, "--resume")
    assert _metrics(killed) == _metrics(tmp_path / "straight")


def _ddp_worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="cifar", num_classes=10, crop=32, dropout=0.0))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = PaperSGD(ddp.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(8, 3, 32, 32, generator=gen) * 50, torch.randint(0, 10, (8,), generator=gen)
        part = slice(rank * 8 // world, (rank + 1) * 8 // world)  # this rank's half of the global batch
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x[part]), y[part]).backward()
        opt.step()
    if rank == 0:
        torch.save(model.state_dict(), path)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # over ~20 s on 2 cores
def test_ddp_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as tmp

    results = {}
    for world in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = str(tmp_path / f"w{world}.pt")
        tmp.spawn(_ddp_worker, args=(world, port, path), nprocs=world)
        results[world] = torch.load(path, weights_only=True)
    for k in results[1]:
        assert torch.allclose(results[1][k], results[2][k], rtol=1e-4, atol=1e-6), k


def test_user_errors(cifar_run, cifar_ready, tmp_path):
    import shutil

    no_stats = tmp_path / "no-stats"
    shutil.copytree(cifar_ready, no_stats, ignore=shutil.ignore_patterns("stats.json"))
    cases = [
        (["run", "--data", tmp_path / "none", "--out", tmp_path / "r"], "none: no such folder"),
        (["run", "--data", no_stats, "--out", tmp_path / "r1", "--arch", "cifar"], "stats.json: missing"),
        (["eval", "--data", cifar_ready, "--checkpoint", tmp_path / "missing.pt"], "no such checkpoint"),
        (
            ["eval", "--data", no_stats, "--checkpoint", cifar_run / "last.pt", "--split", "train"],
            "stats.json: missing",
        ),
    ]
    # What is a user error depends on the host: no GPU, one GPU (a lent H100), or two and more.
    if torch.cuda.device_count() < 2:
        cases.append(
            (["run", "--data", cifar_ready, "--out", tmp_path / "r2", "--model-parallel", 2], "needs 2 GPUs")
        )
    if not torch.cuda.is_available():
        cases.append((["run", "--data", cifar_ready, "--out", tmp_path / "r3", "--device", "cuda"], "CUDA"))
    for args, message in cases:
        proc = alextrain(*args, check=False)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_checkpoint_from_another_architecture(cifar_run):
    from trainer.checkpoint import CheckpointError
    from trainer.inference import load_model

    with pytest.raises(CheckpointError, match="made for 10 classes, the dataset has 1000"):
        load_model(cifar_run / "last.pt", torch.device("cpu"), num_classes=1000)
