"""shards.pool, the worker processes of `shard`, `pca-stats` and `verify`: leaving early (a
damaged shard, Ctrl-C, a dead worker) is prompt, never hangs, and leaves nothing running or
half-written. (`multiprocessing.Pool` hung in 1 `pca-stats` of 40 on a damaged shard.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from shards.pool import Stopped, check_stop, fork_pool
from tests.conftest import IMAGENET, alexprep
from tests.test_shard import tree_bytes

ROOT = Path(__file__).resolve().parents[1]


def _spin(seconds: float) -> str:
    """A job of many short steps (images), checking for a stop between them."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check_stop()
        time.sleep(0.01)
    return "finished"


def _fail(_: object) -> None:
    raise ValueError("train-000003.tar: damaged")


def _die(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would


def test_an_error_stops_the_running_jobs_at_their_next_step_and_runs_no_queued_one():
    start = time.monotonic()
    with pytest.raises(ValueError, match="damaged"), fork_pool(2) as pool:
        running = pool.submit(_spin, 60)
        failing = pool.submit(_fail, None)
        queued = [pool.submit(_spin, 60) for _ in range(4)]
        failing.result()
    assert time.monotonic() - start < 10  # not the 60 s the running job had left
    assert isinstance(running.exception(), Stopped)
    assert all(q.cancelled() or isinstance(q.exception(), Stopped) for q in queued)
    check_stop()  # the parent is never stopped by its pool's flag


def test_a_worker_that_dies_fails_its_job_instead_of_hanging():
    with pytest.raises(BrokenProcessPool), fork_pool(2) as pool:
        pool.submit(_die, None).result(timeout=60)


def _session_processes(sid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in "ZX":
            found.append(int(pid))
    return found


@pytest.mark.slow  # a real shard run of 1,000 images, twice
def test_ctrl_c_of_shard_with_workers_is_prompt_and_a_rerun_completes(
    imagenet_shards, imagenet_labels, tmp_path
):
    out = tmp_path / "out"
    args = ["--labels", imagenet_labels, "--shard-size", 256, "--workers", 2, "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "preprocess.cli", "shard", *map(str, [IMAGENET, out, *args])],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's process group: Ctrl-C reaches the workers too
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((out / "train").glob("*.tmp")):
        time.sleep(0.01)  # both workers are writing a shard
    os.killpg(proc.pid, signal.SIGINT)
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - stopped < 10, "the workers should stop at their next image"
    assert proc.returncode == 130 and "re-run the same command to go on" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not _session_processes(proc.pid), "a worker outlived the run"
    assert not list(out.rglob("*.tmp")), "a half-written shard was left"
    alexprep("shard", IMAGENET, out, *args)
    assert tree_bytes(out) == tree_bytes(imagenet_shards)
