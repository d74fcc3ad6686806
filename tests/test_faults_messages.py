"""Messages that misled (issue 21, class 12): each case now says what is really wrong, or works.
(The unreadable tar and .idx are in test_faults_permissions.py: they need another user.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import alexprep
from tests.faults_common import jpeg, make_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "target, said", [("folder", "a folder"), ("nothing", "nothing")]
)  # nothing: not listed
def test_out_that_is_a_symlink_says_so(tmp_path, target, said):
    src = make_source(tmp_path / "src", train=1, val=1)
    real = tmp_path / "real"
    if target == "folder":
        real.mkdir()
    (tmp_path / "out").symlink_to(real)
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, check=False)
    assert proc.returncode == 2 and f"out: is a symbolic link (to {said}); pass a real folder" in proc.stderr
    assert not real.exists() or list(real.iterdir()) == []


def _ascii_locale(*args: object) -> subprocess.CompletedProcess:
    """A CLI under LANG=C without Python's UTF-8 mode: the filesystem encoding is ASCII."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


@pytest.mark.slow  # fresh interpreters under LC_ALL=C
def test_non_ascii_names_under_an_ascii_locale(tmp_path):
    src = make_source(tmp_path / "sourcé", train=4, val=1)  # a non-ASCII SRC, class and OUT
    (src / "train" / "c0").rename(src / "train" / "caté")
    (src / "val" / "c0").rename(src / "val" / "caté")
    out = tmp_path / "donnéés"
    proc = _ascii_locale(
        "-m", "preprocess.cli", "shard", src, out, "--size", 32, "--shard-size", 2, "--quiet"
    )
    assert proc.returncode == 0 and "changed while writing" not in proc.stderr, proc.stderr
    assert "train: found 12, written 12, rejected 0" in proc.stdout
    for args in (("verify", out, "--quiet"), ("pca-stats", out, "--quiet")):
        proc = _ascii_locale("-m", "preprocess.cli", *args)
        assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "classes.json").read_text())[2]["name"] == "caté"
    # not in the list: training there too (DALI takes paths as UTF-8 text)
    proc = _ascii_locale(
        "-m", "trainer.cli", "run", "--data", out, "--out", tmp_path / "rün", "--arch", "cifar",
        "--epochs", 1, "--global-batch", 4, "--num-threads", 1, "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0 and "done: epoch 0" in proc.stdout, proc.stderr


def test_label_from_name_rejects_each_name_without_a_label_and_goes_on(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = ["n01443537_.JPEG", "_leading.JPEG", "nounderscore.JPEG", "n01440764_tench.JPEG"]
    for i, name in enumerate(names):
        (src / name).write_bytes(jpeg((30 * i, 60, 90)))
    out = tmp_path / "out"
    proc = alexprep("shard", src, out, "--label-from-name", "--size", 16, "--quiet")
    assert "train: found 4, written 2, rejected 2" in proc.stdout, proc.stdout
    rejects = {r["source"]: r["reason"] for r in pq.read_table(out / "train" / "rejects.parquet").to_pylist()}
    assert rejects == {
        "_leading.JPEG": "nothing before the `_` to take a label from",
        "nounderscore.JPEG": "no `_` in the name to take a label from",
    }
    assert "not in the labels" not in proc.stdout  # each is said once, as rejected
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    assert names == ["n01440764", "n01443537"]  # `n01443537_`: a label before the `_`, nothing after


def test_label_from_name_with_no_name_giving_a_label_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "nounderscore.JPEG").write_bytes(jpeg((30, 60, 90)))
    proc = alexprep("shard", src, tmp_path / "out", "--label-from-name", "--size", 16, check=False)
    assert proc.returncode == 2 and "no `_` in the name to take a label from" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_summary_says_how_many_rejects_it_does_not_list(tmp_path):
    src = make_source(tmp_path / "src", train=2, val=1)
    for i in range(7):  # empty files: rejected, 7 in all, only the first 5 are listed
        (src / "train" / "c0" / f"bad{i}.jpg").write_bytes(b"")
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, "--workers", 1, "--quiet")
    assert proc.stdout.count("rejected: ") == 5
    assert f"7 reject(s) (5 shown above), each with its reason: {tmp_path / 'out'}/<split>/" in proc.stdout
    one = tmp_path / "one"
    for i in range(6):
        (src / "train" / "c0" / f"bad{i}.jpg").unlink()
    proc = alexprep("shard", src, one, "--size", 16, "--workers", 1, "--quiet")
    assert proc.stdout.count("rejected: ") == 1
    assert f"1 reject(s), each with its reason: {one}/<split>/rejects.parquet" in proc.stdout


def test_a_changed_src_or_flag_says_what_changed(tmp_path):
    src, out = make_source(tmp_path / "src", train=2, val=1), tmp_path / "out"
    alexprep("shard", src, out, "--size", 16, "--workers", 1, "--quiet")

    def refusal(*args: object) -> str:
        proc = alexprep("shard", src, out, "--workers", 1, "--quiet", *args, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr

    assert "(--size: OUT 16, now 32);" in refusal("--size", 32)
    assert "(--seed: OUT 0, now 1);" in refusal("--size", 16, "--seed", 1)  # not blamed on SRC
    (src / "train" / "c0" / "0.jpg").rename(src / "train" / "c0" / "renamed.jpg")
    assert "(as many, train 6, val 3: renamed, replaced or relabelled; or read" in refusal("--size", 16)
    (src / "train" / "c1" / "new.jpg").write_bytes(jpeg((1, 2, 3)))
    assert "(found then: train 6, val 3; now: train 7, val 3)" in refusal("--size", 16)
