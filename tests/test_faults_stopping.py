"""How a run stops (issue 21, class 11): Ctrl-C twice, and a peer rank killed under torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults_common import make_dataset

ROOT = Path(__file__).resolve().parents[1]
LONG = ("--arch", "cifar", "--crop", 32, "--epochs", 50, "--global-batch", 1, "--num-threads", 1)
RANK_OUT = """
import os, sys
from trainer.cli import main
out = os.path.join(os.environ["ALEXTRAIN_TEST_OUTS"], "rank" + os.environ["RANK"])
main(["run", "--out", out, *sys.argv[1:]])
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("stopping"))


def _wait_for(path: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.parametrize("gap", [0.01, 0.3])
def test_ctrl_c_twice_is_one_line_not_an_atexit_traceback(data, tmp_path, gap):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "run", "--data", data, "--out", run, *LONG, "--device", "cpu"]
    proc = subprocess.Popen(
        list(map(str, cmd)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # as from a terminal: a background job of a script inherits SIGINT ignored, and then the
        # run rightly leaves it ignored (nohup's contract), which is not the case under test
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for(run / "config.json")
    time.sleep(1.5)  # training, DALI pipelines alive
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)  # the second lands in the exit's clean-up (DALI's atexit unload) or before it
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("epoch"))  # no tqdm bars
    # 1: click's "Aborted!"; 130: our handler's exit; -SIGINT: the second Ctrl-C landed after
    # Python restored the default handler in its last shutdown step (a shell shows 130 too)
    assert proc.returncode in (1, 130, -signal.SIGINT), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) <= 2, err  # "Aborted!" and "interrupted again"


def _rank_pid(outs: Path, rank: int) -> int | None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ALEXTRAIN_TEST_OUTS={outs}".encode() in env and f"RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.slow
def test_a_killed_peer_is_one_line_on_the_survivor(data, tmp_path):
    outs, logs = tmp_path / "outs", tmp_path / "logs"
    script = tmp_path / "rank_out.py"
    script.write_text(RANK_OUT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALEXTRAIN_TEST_OUTS": str(outs)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--log-dir", logs, "--redirects", "3", script, "--data", data, *LONG, "--device", "cpu", "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(
        list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT
    )
    _wait_for(outs / "rank0" / "config.json")
    time.sleep(2)  # rank 0 announced the run: both ranks are in the training loop
    victim = _rank_pid(outs, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=180)
    assert proc.returncode != 0
    (survivor,) = [p for p in logs.rglob("stderr.log") if p.parent.name == "0"]
    err = survivor.read_text().strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("alextrain: error: rank 0: rank 1 of this run stopped (Connection"), err
    assert "--resume" in err


@pytest.mark.slow  # eight interpreters that import torch
def test_a_process_that_read_a_manifest_exits_with_its_own_code(data):
    """Arrow's IO threads may drop a buffer after the interpreter began to exit; one that viewed
    Python bytes took the GIL to die and aborted the process (exit 134, about half the time with
    torch loaded) after its work was done: `alextrain run` refusing a dataset exited 134, not 2."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from shards import layout\n"
        f"t = layout.read_parquet(Path({str(data / 'train' / 'manifest.parquet')!r}), columns=['label'])\n"
        "sys.exit(2)\n"
    )
    codes = [
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode
        for _ in range(8)
    ]
    assert codes == [2] * 8, codes
