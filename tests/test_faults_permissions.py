"""Permissions (issue 21, class 8): a real unprivileged user (`setpriv` to nobody) meets a folder
it cannot write or a shard it cannot read, and gets one line saying so, early; `neighbors`
works without its cache where it cannot write one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import alexprep
from tests.faults_common import cifar_checkpoint, jpeg, make_dataset

REPO = Path(__file__).resolve().parents[1]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(module: str, *args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": "/tmp"}
    cmd = [*NOBODY, sys.executable, "-m", module, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    """A folder every user can enter (pytest's tmp_path is root's alone)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    root = Path(tempfile.mkdtemp(prefix="alexnet-perm-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def data(world) -> Path:
    out = make_dataset(world / "d")
    for p in [world / "d", *(world / "d").rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)  # readable by all, writable by root only
    return out


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_reshard_into_a_folder_it_cannot_write(data):
    proc = as_nobody(
        "preprocess.cli", "shard", data.parent / "src", data, "--size", 32, "--workers", 1,
        "--redo-shard", "train-000000", "--quiet",
    )  # fmt: skip
    one_line(proc, "permission denied: make it writable by this user")


def test_pca_stats_on_a_read_only_dataset_fails_before_the_pass(data):
    proc = as_nobody("preprocess.cli", "pca-stats", data, "--workers", 1, "--quiet")
    # pca-stats has no output option: "write elsewhere" would send the user looking for one
    one_line(proc, f"{data}: permission denied: make it writable by this user (or copy {data} to a writable")
    assert "write elsewhere" not in proc.stderr


@pytest.mark.slow  # real processes as another user
@pytest.mark.parametrize("which", ["tar", "idx"])
def test_an_unreadable_shard_is_a_permission_problem_not_damage(world, data, which):
    mine = world / f"unreadable-{which}"
    shutil.copytree(data, mine)
    mine.chmod(0o755)
    shard = mine / "train" / f"train-000000.{which}"
    shard.chmod(0o600)  # root's alone
    for args in (
        ("preprocess.cli", "verify", mine, "--quiet"),
        ("preprocess.cli", "pca-stats", mine, "--quiet"),
    ):
        proc = as_nobody(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        out = proc.stdout + proc.stderr
        assert f"{shard}: not readable by this user (Permission denied): fix its permissions" in out, out
        assert "damaged" not in out.replace("it is not damaged", "") and "None samples" not in out
    # training (a second case, not in the list): refused at its preflight, the same way
    proc = as_nobody(
        "trainer.cli", "run", "--data", mine, "--out", world / f"run-{which}", "--arch", "cifar",
        "--global-batch", 4, "--device", "cpu", "--quiet",
    )  # fmt: skip
    one_line(proc, f"{shard}: not readable by this user")


@pytest.mark.slow  # real processes as another user
def test_neighbors_works_without_its_cache_where_it_cannot_write(world, data):
    run = world / "ro-run"
    run.mkdir()
    cifar_checkpoint(run / "last.pt")
    run.chmod(0o755)
    (run / "last.pt").chmod(0o644)
    query = world / "q.jpg"
    query.write_bytes(jpeg((80, 20, 100)))
    query.chmod(0o644)
    args = (
        "neighbors",
        run,
        "--data",
        data,
        "--query",
        query,
        "--device",
        "cpu",
        "--num-threads",
        1,
        "--k",
        2,
    )
    proc = as_nobody("trainer.cli", *args)
    assert proc.returncode == 0, proc.stderr
    assert "permission denied" in proc.stderr and "working without the cache" in proc.stderr
    assert proc.stdout.startswith(f"{query} ") and sorted(p.name for p in run.iterdir()) == ["last.pt"]
    # root, who can write there, gets the same neighbours and a cache
    from tests.conftest import alextrain

    as_root = alextrain(*args).stdout  # and the figure it could not write as nobody
    assert (
        as_root == proc.stdout + f"wrote {run / 'fig4b.png'}\n" and len(list(run.glob("features-*.npy"))) == 1
    )


def test_shard_from_an_unreadable_image_rejects_only_it(world):
    # not in the list: an input the user cannot read is one rejected input, not a crash
    src = world / "src-perm"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            (src / cls / f"{i}.jpg").write_bytes(jpeg((40 * i, 9, 9)))
    for p in [src, *src.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (src / "a" / "1.jpg").chmod(0o600)
    out = world / "out-perm"
    out.mkdir()
    out.chmod(0o777)
    proc = as_nobody("preprocess.cli", "shard", src, out / "o", "--size", 16, "--workers", 1, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "train: found 4, written 3, rejected 1" in proc.stdout
    assert "a/1.jpg: unreadable: Permission denied" in proc.stdout
    alexprep("verify", out / "o", "--quiet")
