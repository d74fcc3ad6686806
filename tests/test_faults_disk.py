"""A full disk (issue 21, class 7): every writer says which path and what to do in one line,
leaves no temporary file, and leaves its outputs consistent (never half of a pair).

The disk is a real tmpfs of a few hundred KiB (needs root to mount; skipped elsewhere), filled
to the byte where each test wants the write to fail.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import alexprep, alextrain
from tests.faults_common import cifar_checkpoint, make_dataset


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` until `leave` bytes are free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp"))


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if "%|" not in ln]  # not progress bars
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("disk"), classes=3, train=4)


def test_shard_on_a_full_disk_is_one_line_and_leaves_no_temporary(small_disk, data, tmp_path):
    out = small_disk / "out"
    fill(small_disk, 20_000)
    proc = alexprep("shard", data.parent / "src", out, "--size", 32, "--workers", 1, "--quiet", check=False)
    one_line(proc, "no space left on the device: free some space")
    assert temporaries(small_disk) == []
    (small_disk / "filler").unlink()  # space again: the re-run finishes what the first began
    alexprep("shard", data.parent / "src", out, "--size", 32, "--workers", 1, "--quiet")
    alexprep("verify", out, "--quiet")


def test_pca_stats_on_a_full_disk_keeps_the_old_pair(small_disk, data):
    out = small_disk / "data"
    shutil.copytree(data, out)
    from pipeline.augment import load_stats

    before = load_stats(out)
    (out / "mean_image.npy").unlink()  # the new mean image (12 KiB) will not fit, the old is gone
    fill(small_disk, 4_000)
    proc = alexprep("pca-stats", out, "--workers", 1, "--quiet", check=False)
    one_line(proc, "mean_image.npy: no space left on the device")
    assert temporaries(small_disk) == []
    assert json.loads((out / "stats.json").read_text())["mean_rgb"] == before.mean_rgb.tolist()


def test_a_new_mean_image_beside_an_old_stats_json_is_refused(data, tmp_path):
    # what a pca-stats that failed between its two files would leave (not in the list)
    out = tmp_path / "data"
    shutil.copytree(data, out)
    import numpy as np

    from pipeline.augment import StatsError, load_stats

    mean = np.load(out / "mean_image.npy")
    np.save(out / "mean_image.npy", mean * 0.5)
    with pytest.raises(StatsError, match="not the mean image stats.json was computed with"):
        load_stats(out)


@pytest.mark.slow  # trains a run
def test_a_full_disk_at_the_first_checkpoint_lists_no_epoch(small_disk, data):
    run = small_disk / "run"
    fill(small_disk, 40_000)  # config.json and the lock fit; the 640 KiB checkpoint does not
    proc = alextrain(
        "run", "--data", data, "--out", run, "--arch", "cifar", "--crop", 32, "--epochs", 1,
        "--global-batch", 4, "--num-threads", 1, "--device", "cpu", "--quiet", check=False,
    )  # fmt: skip
    one_line(proc, f"{run}/last.pt: no space left on the device")
    assert temporaries(small_disk) == []
    assert (run / "metrics.jsonl").read_text() == ""  # no epoch without its checkpoint


@pytest.mark.parametrize("what", ["eval --json-out", "report"])  # report: not in the list
def test_small_outputs_on_a_full_disk_are_one_line(small_disk, data, tmp_path, what):
    ckpt = cifar_checkpoint(tmp_path / "c.pt")
    if what == "report":
        run = small_disk / "run"
        run.mkdir()
        (run / "metrics.jsonl").write_text(
            json.dumps({"epoch": 0, "lr": 0.01, "train_loss": 1.0, "train_top1_err": 0.5, "step": 3}) + "\n"
        )
        fill(small_disk, 1_000)
        proc = alextrain("report", run, check=False)
        one_line(proc, "no space left on the device")
    else:
        fill(small_disk, 0)
        out = small_disk / "e.json"
        proc = alextrain(
            "eval", "--data", data, "--checkpoint", ckpt, "--device", "cpu", "--num-threads", 1,
            "--json-out", out, check=False,
        )  # fmt: skip
        one_line(proc, f"{out}: no space left on the device")
    assert temporaries(small_disk) == []


def test_a_shard_dropped_on_a_full_disk_closes_and_removes_its_file(small_disk):
    """The tar's closing blocks fail on a full disk too: the file is still closed (no descriptor
    left for the garbage collector, whose ResourceWarning landed in a later command's stderr)."""
    from shards.writer import ShardWriter

    fill(small_disk, 64 * 1024)
    writer = ShardWriter(small_disk, "train", 0)
    with pytest.raises(OSError):
        for i in range(100):  # 100 KiB of JPEG bytes into 64 KiB of free space
            writer.add(f"{i:08d}", 0, f"{i}.jpg", os.urandom(1024), 8, 8, None)
        writer.commit()
    writer.abort()
    assert writer._file.closed and not temporaries(small_disk)


def test_an_output_path_that_is_a_fifo_or_a_link_is_written_into_not_replaced(tmp_path):
    """Outputs are written atomically by a rename, which replaced whatever the path named: as
    root, `--json-out /dev/stdout` or `report --out /dev/full` turned the device into a regular
    file, and a link into a file of its own (a probe found it)."""
    import threading

    from shards import layout

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    (tmp_path / "link-to-pipe").symlink_to(fifo)
    try:
        layout.write_atomic(tmp_path / "link-to-pipe", b'{"top1": 0.5}\n')
        reader.join(timeout=30)
    finally:  # a write that missed the pipe: end the reader's wait (it reads b"")
        if reader.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert got == [b'{"top1": 0.5}\n'] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert (tmp_path / "link-to-pipe").is_symlink()
    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    layout.write_atomic(tmp_path / "link.json", b"new")
    assert (tmp_path / "link.json").is_symlink() and target.read_bytes() == b"new"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
