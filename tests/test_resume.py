"""Exact resume after kill -9 (mid-epoch, one process and torchrun), kept checkpoints, refusals.

Real runs in subprocesses on a tiny CIFAR-10 subset (240 train / 80 test real JPEGs at 32px);
the kill is a real SIGKILL that rank 0 sends itself after a given step (ALEXTRAIN_TEST_DIE), as a
preempted host would die.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import alextrain
from trainer import checkpoint
from trainer.cli import main as cli_main
from trainer.config import TrainConfig
from trainer.faults import DIE_ENV


def _args(
    data: Path, *more: object, epochs: int = 2, every: int | None = 2, loader: str = "dali"
) -> list[str]:
    base = ["--data", data, "--arch", "cifar", "--epochs", epochs, "--steps-per-epoch", 5, "--loader", loader]
    base += ["--global-batch", 16, "--num-threads", 1, "--quiet", *more]
    base += ["--checkpoint-every", every] if every else []
    return [str(a) for a in base]


def _die_at(event: str, out: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, DIE_ENV: event}
    cmd = [sys.executable, "-m", "trainer.cli", "run", "--out", str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _rows(run: Path) -> list[dict]:
    drop = ("img_per_s", "train_seconds")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


@pytest.fixture(scope="module")
def straight(cifar_tiny, tmp_path_factory):
    """Uninterrupted runs by loader: 2 epochs of 5 steps, a checkpoint every 2 steps, 3 kept."""
    runs: dict[str, Path] = {}

    def get(loader: str = "dali") -> Path:
        if loader not in runs:
            out = tmp_path_factory.mktemp(f"straight-{loader}") / "run"
            proc = alextrain("run", "--out", out, *_args(cifar_tiny, "--keep", 3, loader=loader))
            assert "global batch 16 (16 per process x 1)" in proc.stdout
            assert "lr 0.01 (/10 on plateaus of 'test' error, at most 3 times)" in proc.stdout
            runs[loader] = out
        return runs[loader]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_kill_mid_epoch_and_resume_is_bit_exact(straight, cifar_tiny, tmp_path, loader):
    straight_run = straight(loader)
    args = _args(cifar_tiny, "--keep", 3, loader=loader)
    killed = tmp_path / "killed"
    proc = _die_at("step:7", killed, args)  # epoch 1, step 2 of 5; the last checkpoint is at step 6
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = torch.load(killed / "last.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 1, 6)  # mid-epoch
    code, err = _cli("--out", killed, *args)
    assert code == 2 and "--resume" in err  # never silently overwrite a run
    resumed = alextrain("run", "--out", killed, *args, "--resume")
    assert "resuming at epoch 1 step 1" in resumed.stdout
    assert _same_weights(killed / "last.pt", straight_run / "last.pt")
    assert _rows(killed) == _rows(straight_run)  # and the resumed epoch's metrics sums
    assert json.loads((killed / "config.json").read_text())["model"]["crop"] == 32  # cifar: the stored size


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_a_run_resumed_with_other_loader_threads_trains_on_the_same_batches(
    straight, cifar_tiny, tmp_path, loader
):
    """--num-threads may change on --resume (a host with more cores): the training batches do not
    depend on it, so the weights are bit-identical. The reference loader's eval batches are made
    per worker, so the val loss's summation order (not its samples) follows the worker count."""
    args = _args(cifar_tiny, "--keep", 3, loader=loader)
    killed = tmp_path / "killed"
    assert _die_at("step:7", killed, args).returncode == -signal.SIGKILL
    resumed = alextrain("run", "--out", killed, *args, "--resume", "--num-threads", 3)
    assert "resuming at epoch 1 step 1" in resumed.stdout
    assert _same_weights(killed / "last.pt", straight(loader) / "last.pt")
    mine, theirs = _rows(killed), _rows(straight(loader))
    assert [r.keys() for r in mine] == [r.keys() for r in theirs]
    assert all(r == pytest.approx(t, rel=1e-6) for r, t in zip(mine, theirs, strict=True))
    assert json.loads((killed / "config.json").read_text())["loader"]["num_threads"] == 3


@pytest.mark.slow
def test_the_run_lock_dies_with_the_run_not_with_its_loader_workers(cifar_tiny, tmp_path):
    """kill -9 of a run on the reference loader: its DataLoader workers (forked, orphaned, alive
    until their watchdog sees the parent gone, ~5 s) held the --out lock, so a restart policy's
    immediate --auto-resume was refused as "another alextrain run" (a fresh probe found it). The
    victim writes to a file, not a pipe: a pipe would make the wait last as long as the orphans."""
    out, args = tmp_path / "run", _args(cifar_tiny, loader="reference")
    with open(tmp_path / "victim.log", "w") as log:
        cmd = [sys.executable, "-m", "trainer.cli", "run", "--out", str(out), *args]
        victim = subprocess.Popen(cmd, env={**os.environ, DIE_ENV: "step:3"}, stdout=log, stderr=log)
        assert victim.wait() == -signal.SIGKILL
    resumed = alextrain("run", "--out", out, *args, "--auto-resume")
    assert "resuming at epoch 0 step 2" in resumed.stdout


@pytest.mark.slow
def test_keeps_best_and_the_newest_n(straight):
    run = straight()
    # checkpoints at steps 2, 4, 5 (epoch 0's end), 6, 8, 10 (epoch 1's end): the newest 3 kept
    assert [p.name for p in checkpoint.kept(run)] == [f"step-{s:08d}.pt" for s in (6, 8, 10)]
    assert (run / "last.pt").samefile(run / "step-00000010.pt") or (run / "last.pt").read_bytes() == (
        run / "step-00000010.pt"
    ).read_bytes()
    rows = _rows(run)
    best = torch.load(run / "best.pt", weights_only=True)
    errs = [r["val_top1_err"] for r in rows]
    first_best = errs.index(min(errs))
    assert best["best_top1_err"] == min(errs) and best["epoch"] == first_best + 1  # saved after that epoch
    assert checkpoint.resolve(run) == run / "best.pt"
    assert not list(run.glob(".*tmp"))  # nothing half-written left behind


@pytest.mark.slow
def test_kill_during_the_first_checkpoint_write_lists_each_epoch_once(straight, cifar_tiny, tmp_path):
    straight_run = straight()
    args = _args(cifar_tiny, "--keep", 3, every=None)
    out = tmp_path / "run"
    proc = _die_at("save:1", out, args)  # the first save: epoch 0's end
    assert proc.returncode == -signal.SIGKILL
    # epoch 0 not saved, so not logged either (issue 21: the checkpoint is written before its row)
    assert not (out / "last.pt").exists() and len(_rows(out)) == 0
    assert list(out.glob(".last.pt.*.tmp"))  # the half-written file the kill left
    alextrain("run", "--out", out, *args, "--auto-resume")  # nothing to resume: a fresh start
    assert [r["epoch"] for r in _rows(out)] == [0, 1] and not list(out.glob(".*.tmp"))
    assert _rows(out) == _rows(straight_run)


@pytest.mark.slow
def test_a_run_that_lost_its_last_checkpoint_is_never_started_over(straight, cifar_tiny, tmp_path):
    """A trained run without last.pt (deleted, left out of a copy) was overwritten by a plain
    start and by --auto-resume, and --resume said that no run was started there."""
    run = tmp_path / "run"
    shutil.copytree(straight(), run)
    (run / "last.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = _args(cifar_tiny, "--keep", 3)
    for how in ((), ("--auto-resume",), ("--resume",)):
        code, err = _cli("--out", run, *args, *how)
        held = "best.pt, step-00000006.pt, step-00000008.pt, step-00000010.pt, metrics.jsonl (2 epoch(s))"
        assert code == 2 and f"last.pt: missing, though {run} holds {held} of a run" in err, (how, err)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    shutil.copy(run / "step-00000010.pt", run / "last.pt")  # as the refusal says
    alextrain("run", "--out", run, "--resume", "--epochs", 3, "--quiet")
    assert [r["epoch"] for r in _rows(run)] == [0, 1, 2] and _rows(run)[:2] == _rows(straight())


NO_DALI = """
import sys
class _NoDali:  # as on a host where nvidia-dali is not installed
    def find_spec(self, name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _NoDali())
from trainer.cli import main
main()
"""


def test_loader_auto_resumed_where_it_resolves_to_another_loader_is_refused(cifar_tiny, tmp_path):
    """--loader auto (the default) is DALI where it is installed: resumed on a host without it,
    the run went on with the reference loader (another data stream), saying nothing."""
    run = tmp_path / "run"
    args = [a for a in _args(cifar_tiny, epochs=1, every=None) if a not in ("--loader", "dali")]
    alextrain("run", "--out", run, *args)
    assert torch.load(run / "last.pt", weights_only=True)["backend"] == "dali"
    cmd = [sys.executable, "-c", NO_DALI, "run", "--out", str(run), "--resume", "--epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    said = "the loader that ran (checkpoint 'dali', now 'reference': nvidia.dali is not installed here)"
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    alextrain("run", "--out", run, "--resume", "--epochs", 2, "--quiet")  # where DALI is: it goes on
    assert [r["epoch"] for r in _rows(run)] == [0, 1]
    # the other way: `auto` was the reference loader; where DALI is, that loader is named to go on
    other = tmp_path / "other"
    cmd = [sys.executable, "-c", NO_DALI, "run", "--out", str(other), *args]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == 0
    code, err = _cli("--out", other, "--resume", "--epochs", 2)
    said = "the loader that ran (checkpoint 'reference', now 'dali': pass --loader reference to go on)"
    assert code == 2 and said in err, err
    code, err = _cli("--out", other, "--resume", "--epochs", 2, "--loader", "dali")  # not what ran
    assert code == 2 and "loader (checkpoint 'auto', now 'dali')" in err, err
    alextrain("run", "--out", other, "--resume", "--epochs", 2, "--loader", "reference", "--quiet")
    assert [r["epoch"] for r in _rows(other)] == [0, 1]


@pytest.mark.slow
def test_resume_refuses_other_settings_but_extends_epochs(straight, cifar_tiny, tmp_path):
    straight_run = straight()
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    config = (run / "config.json").read_text()
    args = _args(cifar_tiny)
    code, err = _cli("--out", run, *args, "--resume", "--lr", 0.02, "--activation", "tanh")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "lr (checkpoint 0.01, now 0.02)" in err and "activation (checkpoint 'relu', now 'tanh')" in err
    assert (run / "config.json").read_text() == config  # nothing rewritten
    code, err = _cli("--out", run, *args, "--auto-resume", "--lr", 0.02)  # the same, up front
    assert code == 2 and "--auto-resume with other settings than the run's: lr (checkpoint 0.01" in err
    # the settings left out come from the run's config.json: no need to repeat every flag
    alextrain("run", "--out", run, "--resume", "--epochs", 3, "--quiet")
    assert [r["epoch"] for r in _rows(run)] == [0, 1, 2] and _rows(run)[:2] == _rows(straight_run)
    expected = json.loads(config)
    expected["optim"]["epochs"], expected["run"]["out"] = 3, str(run)
    assert json.loads((run / "config.json").read_text()) == expected


@pytest.mark.slow
def test_malformed_checkpoints_are_refused_clearly(straight, cifar_tiny, tmp_path):
    straight_run = straight()
    good = torch.load(straight_run / "last.pt", weights_only=True)
    fc = next(k for k in good["model"] if k.startswith("fc") and k.endswith("weight"))
    broken = {
        "missing optimizer": {k: v for k, v in good.items() if k != "optimizer"},
        "unexpected rng": {**good, "rng": {}},
        "do not fit": {**good, "model": {**good["model"], fc: torch.zeros(3, 3)}},
    }
    for message, state in broken.items():
        run = tmp_path / message.replace(" ", "-")
        shutil.copytree(straight_run, run)
        checkpoint.save(run / "last.pt", state)
        code, err = _cli("--out", run, *_args(cifar_tiny), "--resume")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    (run / "last.pt").unlink()  # as --keep writes it: a hard link to the newest step file
    os.link(run / "step-00000010.pt", run / "last.pt")
    (run / "last.pt").write_bytes(b"not a checkpoint")  # so that one is damaged too
    code, err = _cli("--out", run, *_args(cifar_tiny), "--resume")
    assert code == 2 and "not a readable checkpoint" in err
    assert "its other checkpoints: best.pt, step-00000006.pt, step-00000008.pt (to go on" in err, err


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main, ["run", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.stderr


def test_settings_are_refused_up_front_with_the_key_named(demo_data, tmp_path):
    toml = tmp_path / "c.toml"
    listy = tmp_path / "l.json"
    listy.write_text("[1, 2]")
    out = tmp_path / "never"
    base = ["--data", demo_data / "shards", "--out", out]
    cases = [
        (["--crop", 0], "--crop (crop) = 0"),
        (["--crop", -8], "--crop (crop) = -8"),
        (["--crop", 100], "alexnet takes 224 or 227"),
        (["--arch", "cifar", "--crop", 48], "larger than the stored images (32px)"),
        (["--arch", "cifar", "--num-classes", 7], "the dataset"),
        (["--num-classes", 0], "--num-classes (num_classes) = 0"),
        (["--model-parallel", 0], "--model-parallel (model_parallel) = 0"),
        (["--towers", 0], "--towers (towers) = 0"),
        (["--arch", "cifar", "--towers", 2], "--towers (towers): --arch cifar has one tower"),
        (["--arch", "cifar", "--dropout", 0.5], "--dropout (dropout): --arch cifar has no dropout"),
        (["--epochs", -1], "--epochs (epochs) = -1"),
        (["--steps-per-epoch", 0], "--steps-per-epoch (steps_per_epoch) = 0"),
        (["--lr", "nan"], "--lr (lr) = nan"),
        (["--lr", -1], "--lr (lr) = -1.0"),
        (["--lr", 1e30], "--lr (lr) = 1e+30"),
        (["--momentum", 5], "--momentum (momentum) = 5.0"),
        (["--weight-decay", -1], "--weight-decay (weight_decay) = -1.0"),
        (["--patience", -1], "--patience (patience) = -1"),
        (["--max-drops", -1], "--max-drops (max_drops) = -1"),
        (["--keep", 0], "--keep (keep) = 0"),
        (["--shuffle-buffer", 10**12], "(shuffle_buffer) = 1000000000000: must be in [1, 65536]"),
        (["--prefetch", 10**9], "--prefetch (prefetch) = 1000000000: must be in [1, 32]"),
        (["--checkpoint-every", 0], "--checkpoint-every (checkpoint_every) = 0"),
        (["--schedule", "step"], "--schedule step needs --lr-steps"),
        (["--lr-steps", "30,60"], "--lr-steps (lr_steps): --schedule plateau"),
        (["--config", toml], 'epochs) = "abc"'),
        (["--config", listy], "not a list"),
        (["--arch", "cifar", "--out", listy], "exists and is not a folder"),
    ]
    for args, message in cases:
        toml.write_text('epochs = "abc"\n')
        code, err = _cli(*base, *args)
        assert code == 2 and message.replace('"', "'") in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
        assert not out.exists(), args  # refused before anything was written
    # a run's own config.json holds every key, the defaults of options its arch lacks too: it is
    # a valid --config (to repeat a run); only a value that would change something is refused
    saved = tmp_path / "config.json"
    repeat = TrainConfig.of(data=str(tmp_path / "none"), out=str(out), arch="cifar")
    saved.write_text(json.dumps(repeat.to_dict()))
    assert "none: no such folder" in _cli("--config", saved)[1]  # past every check of the settings
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "towers": 1}))
    assert "--towers (towers): --arch cifar has one tower" in _cli("--config", saved)[1]


@pytest.mark.slow
def test_without_a_val_split_only_a_fixed_step_schedule_runs(cifar_tiny_train_only, tmp_path):
    args = ["--data", cifar_tiny_train_only, "--arch", "cifar", "--steps-per-epoch", 2, "--global-batch", 16]
    args += ["--num-threads", 1, "--epochs", 2, "--quiet"]
    code, err = _cli("--out", tmp_path / "plateau", *args)
    assert code == 2 and "no val, validation or test split" in err and "--schedule step" in err
    assert not (tmp_path / "plateau").exists()
    proc = alextrain("run", "--out", tmp_path / "step", *args, "--schedule", "step", "--lr-steps", 1)
    assert "/10 at epochs 1" in proc.stdout
    assert [r["lr"] for r in _rows(tmp_path / "step")] == pytest.approx([0.01, 0.001])
    assert (
        not (tmp_path / "step" / "best.pt").exists()
        and checkpoint.resolve(tmp_path / "step").name == "last.pt"
    )


ROOT = Path(__file__).resolve().parents[1]
RANK_OUT = """
import os, sys
from trainer.cli import main
rank = os.environ["RANK"]
extra = os.environ.get("ALEXTRAIN_TEST_EXTRA" + rank, "").split()
main(["run", "--out", os.path.join(os.environ["ALEXTRAIN_TEST_OUTS"], "rank" + rank), *sys.argv[1:], *extra])
"""


def _torchrun(tmp: Path, outs: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """Two gloo ranks on the CPU, each with its own --out (a runs folder that is not shared)."""
    script = tmp / "rank_out.py"
    script.write_text(RANK_OUT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALEXTRAIN_TEST_OUTS": str(outs), **env}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
    ]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_torchrun_resume_comes_from_rank_0_alone(cifar_tiny, tmp_path):
    args = _args(cifar_tiny, epochs=2)
    straight = _torchrun(tmp_path, tmp_path / "straight", args)
    assert straight.returncode == 0, straight.stderr
    assert "global batch 16 (8 per process x 2)" in straight.stdout
    killed = tmp_path / "killed"
    proc = _torchrun(tmp_path, killed, args, **{DIE_ENV: "step:3"})  # epoch 0, step 3 of 5
    assert proc.returncode != 0
    state = torch.load(killed / "rank0" / "last.pt", weights_only=True)
    assert (state["epoch"], state["epoch_step"]) == (0, 2)
    assert not (killed / "rank1" / "last.pt").exists()  # only rank 0's folder holds the checkpoint
    resumed = _torchrun(tmp_path, killed, [*args, "--auto-resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 0 step 2" in resumed.stdout
    assert _same_weights(killed / "rank0" / "last.pt", tmp_path / "straight" / "rank0" / "last.pt")
    assert _rows(killed / "rank0") == _rows(tmp_path / "straight" / "rank0")
    other = _torchrun(tmp_path, tmp_path / "disagree", args, ALEXTRAIN_TEST_EXTRA1="--lr 0.02")
    assert other.returncode != 0 and "rank 1 disagrees with rank 0 on: lr" in other.stderr, other.stderr
    assert not (tmp_path / "disagree" / "rank0" / "last.pt").exists()


class _Batches:
    """Stand-in data with the TrainLoader interface: batch k of epoch e is a function of (e, k)."""

    steps_per_epoch = 6

    def epoch(self, epoch: int, start_step: int = 0):
        for k in range(start_step, self.steps_per_epoch):
            gen = torch.Generator().manual_seed(1000 * epoch + k)
            yield torch.randn(4, 3, 32, 32, generator=gen) * 50, torch.randint(0, 10, (4,), generator=gen)


def _trainer(tmp_path: Path):
    from trainer.config import TrainConfig
    from trainer.distributed import Env
    from trainer.runstate import Trainer
    from trainer.train import build

    cfg = TrainConfig.of(arch="cifar", num_classes=10, crop=32, out=str(tmp_path), lr=0.001)
    env = Env(0, 1, 0, [torch.device("cpu")])
    torch.manual_seed(0)
    return Trainer(cfg, env, {"fake": True}, build(cfg, env))


def test_steps_never_wait_for_the_device_and_resume_in_process_is_exact(tmp_path, monkeypatch):
    from trainer import train

    reads = []
    for name in ("item", "tolist", "__int__", "__float__", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _r=real, _n=name: reads.append(_n) or _r(self, *a)
        )
    straight = _trainer(tmp_path / "a")
    sums = train.train_epoch(straight, straight.model, _Batches(), 0, 6, bar=False)
    assert reads == []  # six steps, not one host read of a device value
    monkeypatch.setattr(train, "LOG_EVERY", 2)
    half = _trainer(tmp_path / "b")
    train.train_epoch(half, half.model, _Batches(), 0, 3, bar=True)  # 3 of 6 steps, then "killed"
    assert reads.count("item") == 1  # the progress bar read the loss once, at step 2
    monkeypatch.undo()
    state = half.state(half.pos.sums.state(1, 0.0))
    resumed = _trainer(tmp_path / "c")
    resumed.restore(state, tmp_path / "b" / "last.pt")
    assert (resumed.pos.epoch, resumed.pos.epoch_step, resumed.pos.step) == (0, 3, 3)
    sums_resumed = train.train_epoch(resumed, resumed.model, _Batches(), 0, 6, bar=False)
    for (k, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    assert sums_resumed.epoch_row(1, 6) | {"img_per_s": 0, "train_seconds": 0} == sums.epoch_row(1, 6) | {
        "img_per_s": 0,
        "train_seconds": 0,
    }


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_a_damaged_shard_is_named_before_training(demo_data, tmp_path, mode):
    data = tmp_path / "data"
    shutil.copytree(demo_data / "shards", data)
    tar = data / "train" / "train-000001.tar"
    blob = bytearray(tar.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside a stored JPEG, the size unchanged
    tar.write_bytes(bytes(blob))
    out = tmp_path / "run"
    code, err = _cli("--data", data, "--out", out, "--arch", "cifar", "--epochs", 1, "--verify-data", mode)
    assert code == 2 and "train-000001" in err and "damaged" in err, err
    said = [ln for ln in re.split(r"[\r\n]", err) if ln.strip() and not ln.startswith("hashing")]
    assert len(said) == 1 and not out.exists(), err  # the hashing bar, then one line
