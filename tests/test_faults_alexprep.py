"""`alexprep verify` and `pca-stats` as a hostile tester met them: Ctrl-C (click's bare "Aborted!",
exit 1, where `shard` says what is kept and exits 130), a mistyped OUT, an OUT without
classes.json, and libjpeg's own lines on a corrupt shard."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shards.index import read_index
from tests.conftest import alexprep
from tests.faults_common import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("alexprep"), stats=False, classes=3, train=4)


def _ctrl_c(args: list[object], bar: bytes) -> tuple[int, str]:
    """Run `alexprep ARGS` as a terminal would, press Ctrl-C once its progress bar `bar` is up (the
    pass under way), and return its exit status and stderr without the bar's lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "preprocess.cli", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a terminal's process group: Ctrl-C reaches the workers too
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen, deadline = b"", time.monotonic() + 120
    while bar not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        if select.select([proc.stderr], [], [], 1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    time.sleep(0.5)  # the workers are started and at work
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    lines = re.split(r"[\r\n]", (seen + rest).decode())
    return proc.returncode, "\n".join(ln for ln in lines if ln.strip() and not ln.startswith(bar.decode()))


def _ctrl_c_during(args: list[object], bar: bytes, result: Path) -> tuple[int, str]:
    """`_ctrl_c`, pressed while the pass is under way: on a loaded machine the Ctrl-C can land
    after the pass wrote `result` (then at interpreter exit, as -SIGINT), which is not the case
    under test, so that try is repeated (at most 3)."""
    for _ in range(3):
        code, err = _ctrl_c(args, bar)
        if not result.exists():
            return code, err
        result.unlink()
    pytest.fail(f"the pass always ended before the Ctrl-C landed: {args}")


@pytest.mark.slow  # real processes, 1,000 real images, signals
def test_ctrl_c_of_pca_stats_says_nothing_was_written_and_exits_130(imagenet_shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(imagenet_shards, out)
    code, err = _ctrl_c_during(["pca-stats", out, "--workers", 1], b"pca-stats", out / "stats.json")
    assert code == 130, err  # not click's "Aborted!" and 1
    said = f"nothing was written (stats.json comes at the end): re-run `alexprep pca-stats {out}`"
    assert err == f"alexprep: interrupted; {said}", err
    assert not (out / "stats.json").exists() and not list(out.rglob("*.tmp"))


@pytest.mark.slow  # real processes, 1,000 real images, signals
def test_ctrl_c_of_verify_says_nothing_was_recorded_and_exits_130(imagenet_shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(imagenet_shards, out)
    (out / "verified.json").unlink(missing_ok=True)
    code, err = _ctrl_c_during(["verify", out, "--workers", 1], b"verify", out / "verified.json")
    assert code == 130, err
    said = f"nothing was recorded as verified: re-run `alexprep verify {out}` to check it"
    assert err == f"alexprep: interrupted; {said}", err
    assert not (out / "verified.json").exists()


def test_verify_of_a_path_that_does_not_exist_says_no_such_folder(tmp_path):
    proc = alexprep("verify", tmp_path / "NONEXISTENT", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "NONEXISTENT: no such folder" in proc.stderr
    assert "alexprep shard" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_verify_without_classes_json_says_how_to_restore_it(data, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(data, out)
    (out / "classes.json").unlink()
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "no classes.json; restore it by re-running `alexprep shard` with the original" in proc.stderr
    assert "model" not in proc.stderr, proc.stderr  # a data tool: no model in sight


@pytest.mark.slow  # a fresh interpreter: libjpeg writes to the process's own stderr
def test_verify_of_a_corrupt_jpeg_is_its_verdict_without_libjpegs_lines(data, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(data, out)
    tar = out / "train" / "train-000000.tar"
    jpg = next(m for m in read_index(tar.with_suffix(".idx"))[1] if m.ext == "jpg")
    raw = bytearray(tar.read_bytes())
    raw[jpg.offset + jpg.size - 12 : jpg.offset + jpg.size - 10] = b"\xff\xd9"  # an early end of image
    tar.write_bytes(bytes(raw))
    proc = alexprep("verify", out, "--quiet", check=False, real_process=True)
    assert proc.returncode == 1 and proc.stdout == f"train-000000.tar: {jpg.name[:8]}: checksum mismatch\n"
    assert proc.stderr == f"verify: 1 problem(s) in {out}\n", proc.stderr  # no "Corrupt JPEG data: ..."
