"""How a run stops (issue 21, class 11): Ctrl-C twice, and a peer rank killed under torchrun."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults_common import make_dataset
from trainer import hosts

ROOT = Path(__file__).resolve().parents[1]


def long_run(processes: int = 1) -> tuple:
    """A run that outlasts the test (each stops it): one image per process per step."""
    return ("--arch", "cifar", "--crop", 32, "--epochs", 100_000, "--global-batch", processes) + (
        "--num-threads",
        1,
    )


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


@pytest.mark.slow  # a real training process and its signals
@pytest.mark.parametrize("gap", [None, 0.01, 0.3])  # None: Ctrl-C once
def test_ctrl_c_twice_is_one_line_not_an_atexit_traceback(data, tmp_path, gap):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "run", "--data", data, "--out", run, *long_run()]
    cmd += ["--device", "cpu"]
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
    if gap is not None:
        time.sleep(gap)  # the second lands in the exit's clean-up (DALI's atexit unload) or before it
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = "\n".join(
        ln for ln in re.split(r"[\r\n]", err) if ln.strip() and not ln.startswith(("epoch", "hashing"))
    )
    # 1: click's "Aborted!"; 130: our handler's exit; -SIGINT: the second Ctrl-C landed after
    # Python restored the default handler in its last shutdown step (a shell shows 130 too)
    assert proc.returncode in (1, 130, -signal.SIGINT), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) <= 2, err  # "interrupted; ..." and "interrupted again"
    if gap is None:
        assert proc.returncode == 130, err
    if "interrupted again" not in err:  # the first Ctrl-C's message, on a line of its own: how to go on
        assert "alextrain: interrupted; " in err, err
        assert f"`alextrain run --out {run} --resume`" in err or "start it again" in err, err


def _forked_children(pid: int) -> list[int]:
    """The children of `pid` forked from it (its own command line): its loading workers."""
    mine = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes() == mine:
                found.append(int(child))
    return found


@pytest.mark.slow  # a real training process; its loading worker killed as the OOM killer would
def test_a_killed_loading_worker_is_said_as_such_not_as_damaged_data(data, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "run", "--data", data, "--out", run, *long_run()]
    cmd += ["--device", "cpu", "--loader", "reference"]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / "config.json")
        end = time.time() + 60
        while not (workers := _forked_children(proc.pid)):
            assert time.time() < end and proc.poll() is None, "no loading worker appeared"
            time.sleep(0.1)
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "a loading worker process ended (DataLoader worker (pid" in last, last  # killed, or exited
    assert "not a fault of the data" in last and "verify" not in last, last
    resumable = (run / "last.pt").is_file()  # where to go on from: the checkpoint, if one was written
    assert ("start the same command again with --resume" in last) == resumable, last
    assert ("no checkpoint was written yet: start it again" in last) != resumable, last


def _rank_pids(outs: Path, rank: int | None = None) -> list[int]:
    """The workers of this test's run (rank `rank`, or all): torchrun starts each in a session of
    its own, so killing an agent's process group leaves its worker running."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        worker = f"ALEXTRAIN_TEST_OUTS={outs}".encode() in env and any(e.startswith(b"RANK=") for e in env)
        if worker and (rank is None or f"RANK={rank}".encode() in env):
            pids.append(int(pid))
    return pids


def _kill_all(outs: Path, agents: list[subprocess.Popen]) -> None:
    for pid in _rank_pids(outs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for p in agents:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


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


def _two_nodes(data: Path, tmp_path: Path) -> tuple[Path, list[subprocess.Popen]]:
    """Two torchrun agents on loopback as two hosts (static rendezvous, as docker/two-node.sh),
    one worker each, each with its own copy of the shards (never verified: hashed at start) and
    its own runs folder; returns (the runs' parent, the agents) once both are training."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outs, script = tmp_path / "outs", tmp_path / "rank_out.py"
    script.write_text(RANK_OUT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALEXTRAIN_TEST_OUTS": str(outs)}
    agents = []
    for node in (0, 1):
        shards = tmp_path / f"shards{node}"
        shutil.copytree(data, shards, ignore=shutil.ignore_patterns("verified.json"))
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", 2, "--node-rank", node,
            "--nproc-per-node", 1, "--rdzv-backend", "static", "--master-addr", "127.0.0.1",
            "--master-port", port, "--max-restarts", 0, "--log-dir", tmp_path / f"logs{node}",
            "--redirects", 3, script, "--data", shards, *long_run(2), "--device", "cpu", "--quiet",
        ]  # fmt: skip
        agents.append(subprocess.Popen(list(map(str, cmd)), env=env, cwd=ROOT, start_new_session=True))
    try:
        _wait_for(outs / "rank0" / "config.json")
        time.sleep(2)  # rank 0 announced the run: both ranks are in the training loop
    except BaseException:
        _kill_all(outs, agents)
        raise
    return outs, agents


@pytest.mark.slow  # two torchrun agents, two interpreters that import torch
def test_a_killed_peer_is_one_line_on_the_survivor(data, tmp_path):
    """Rank 1's host lost (its worker killed): rank 0's next collective fails, said in one line.
    (Under one agent, torchrun itself stops the sibling, racing the survivor's message.)"""
    outs, agents = _two_nodes(data, tmp_path)
    try:
        (victim,) = _rank_pids(outs, 1)
        os.kill(victim, signal.SIGKILL)
        assert agents[0].wait(timeout=180) != 0
    finally:
        _kill_all(outs, agents)
    (survivor,) = (tmp_path / "logs0").rglob("stderr.log")
    err = survivor.read_text().strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("alextrain: error: rank 0: rank 1 of this run stopped (Connection"), err
    assert "--resume" in err


@pytest.mark.slow  # two torchrun agents, two interpreters that import torch
def test_the_surviving_host_keeps_its_hash_record_when_its_peer_dies(data, tmp_path):
    """Node 0 killed, node 1's run fails; its folder holds only its clean-hash record, which must
    outlive the failure, or its restart hashes again (found by two-node.sh: the failed start's
    clean-up removed it as an unused folder)."""
    outs, agents = _two_nodes(data, tmp_path)
    try:
        record = hosts.verified_record(outs / "rank1")
        assert record.is_file()  # node 1 hashed its copy and kept the record beside its run
        (worker,) = _rank_pids(outs, 0)
        os.killpg(agents[0].pid, signal.SIGKILL)  # host 0 gone: its agent and its worker
        os.kill(worker, signal.SIGKILL)
        assert agents[1].wait(timeout=180) != 0
    finally:
        _kill_all(outs, agents)
    assert record.is_file(), sorted(p.name for p in (outs / "rank1").glob("*"))


class _Handing:
    """A DataLoader iterator as torch's is when a batch's read fails: its `_workers` and which
    of them are still in service (`_workers_status`); two batches, then `error`."""

    def __init__(self, workers: list, serving: list[bool], error: BaseException):
        self._workers, self._workers_status, self.error = workers, serving, error
        self.given = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.given += 1
        if self.given > 2:
            raise self.error
        return self.given


def test_a_worker_killed_while_handing_over_a_batch_is_a_dead_worker_not_a_socket_error():
    """The race the CI met once: the worker killed while its batch's fds were being fetched (on a
    CUDA host, pin_memory's thread does that read and dies of it). A worker that exited cleanly
    when its share ran out is not the one, and a worker's own error is the data's."""
    import multiprocessing

    from pipeline.reference import PIN_THREAD, handed_over

    ctx = multiprocessing.get_context("fork")
    dying, alive, done = (ctx.Process(target=time.sleep, args=(t,)) for t in (60, 60, 0))
    for p in (dying, alive, done):
        p.start()
    done.join()  # its share ran out: torch marked it out of service
    reset = ConnectionResetError(104, "Connection reset by peer")
    try:
        os.kill(dying.pid, signal.SIGKILL)  # not reaped yet: is_alive() reaps it in the wait
        for error, why in (
            (reset, "ConnectionResetError"),
            (RuntimeError(PIN_THREAD), "its pin-memory thread ended"),
        ):
            got = []
            with pytest.raises(
                RuntimeError, match=rf"^DataLoader worker \(pid\(s\) {dying.pid}\) exited"
            ) as e:
                got.extend(handed_over(_Handing([done, alive, dying], [False, True, True], error)))
            assert got == [1, 2] and f"({why} while it handed over a batch)" in str(e.value)
        # no worker in service died: the error goes out as it was (the cleanly exited one aside)
        for error in (reset, EOFError("a worker's own"), RuntimeError("another fault")):
            with pytest.raises(type(error)) as e:
                list(handed_over(_Handing([done, alive], [False, True], error), grace=0.2))
            assert e.value is error
    finally:
        for p in (dying, alive, done):
            p.kill()
            p.join()
