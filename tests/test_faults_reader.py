"""Shards that change under a running reader (issue 21, class 3).

A memory-mapped tar that is truncated while DALI reads it is a SIGBUS: the kernel's answer to a
read of a mapped page past the end of the file, which no Python code can catch. With
`mmap=False` (`alextrain run --no-mmap`) DALI reads with plain file I/O and the same truncation
is an error that the loader names, in one line.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.faults_common import make_dataset

# Read one batch, truncate every shard, read on: as `alexprep shard` re-run into the dataset (or a
# full disk, a sync tool) would do under a running trainer.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from pipeline.loader import DamagedSampleError, Feed, LoaderConfig, TrainLoader
    data, mmap = Path(sys.argv[1]), sys.argv[2] == "1"
    cfg = LoaderConfig(backend="dali", num_threads=1, mmap=mmap, shuffle_buffer=1, prefetch=1)
    batches = TrainLoader(data, cfg, Feed(batch_size=4, crop=28)).epoch(0)
    next(batches)
    for tar in sorted((data / "train").glob("*.tar")):
        os.truncate(tar, 2048)
    try:
        for _ in batches:
            pass
    except DamagedSampleError as e:
        print(e)
        sys.exit(3)
    """
)


@pytest.fixture
def data(tmp_path) -> Path:
    return make_dataset(tmp_path, "--shard-size", 12, train=20, val=1)


def _read(data: Path, mmap: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data), "1" if mmap else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.slow  # a real training process
def test_without_mmap_a_shard_truncated_under_the_reader_is_an_error_naming_it(data):
    proc = _read(data, mmap=False)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    line = proc.stdout.strip()
    assert "\n" not in line and f"{data}/train: reading the shards failed" in line
    assert "train-00000" in line and "outside of the archive file" in line  # the shard, and why


@pytest.mark.slow  # a real training process
def test_with_mmap_the_same_truncation_is_a_bus_error(data):
    # why --no-mmap exists: the default (mapped, fastest on a local disk) cannot survive this
    proc = _read(data, mmap=True)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr[-2000:])
