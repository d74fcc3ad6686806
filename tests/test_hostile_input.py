"""`alexprep` against hostile and unlucky input (issue 9): every input written or rejected with a
reason, every bad argument a one-line error, nothing outside OUT written or outside SRC read.

Inputs are generated here with known answers: tiny images, PNG headers that lie, FIFOs, link
loops, CSVs with a BOM or in Latin-1, two runs at once on one OUT.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tqdm import tqdm

from shards import layout
from shards.index import read_index
from shards.verify import DamagedDataError, preflight
from tests.conftest import IMAGENET, alexprep, imagenet_files, write_labels

SIZE = "32"


def jpeg(color: tuple[int, int, int], w: int = 48, h: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A valid PNG signature + IHDR claiming w x h, and one tiny compressed IDAT (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def summary_counts(stdout: str, split: str = "train") -> tuple[int, int, int]:
    line = next(x for x in stdout.splitlines() if x.startswith(f"{split}: found"))
    f, w, r = (int(x.split()[-1]) for x in line.split(":", 1)[1].split(","))
    assert f == w + r, line  # found = written + rejected, on every run
    return f, w, r


def rejects(out: Path, split: str = "train") -> dict[str, str]:
    return {r["source"]: r["reason"] for r in pq.read_table(out / split / "rejects.parquet").to_pylist()}


def written(out: Path, split: str = "train") -> dict[str, dict]:
    return {r["source"]: r for r in pq.read_table(out / split / "manifest.parquet").to_pylist()}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of everything under root: equal snapshots mean nothing was rewritten."""
    return {
        str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if not p.name.startswith(".alexprep-node")
    }


# ---- one run over a folder of hostile files: each becomes one rejected input, with its reason --


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    src, outside = tmp / "src", tmp / "outside"
    src.mkdir()
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg((1, 2, 3)))
    files = {
        "good_a.jpg": jpeg((200, 0, 0)),
        "good_b.jpg": jpeg((0, 200, 0)),
        "bomb.png": png_header(60000, 60000),  # 1.8 KB claiming 3.6 gigapixels
        "strip.png": png_header(1, 65000),  # resizing to 256 wide would be 256 x 16.6M
        "big.jpg": jpeg((9, 9, 9)) + b"\0" * 5000,  # over the --max-bytes given below
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    (src / "nonutf8_\xe9.jpg".encode("latin-1").decode("utf-8", "surrogateescape")).write_bytes(
        jpeg((0, 0, 200))
    )
    os.mkfifo(src / "fifo.jpg")
    os.symlink("loop_b.jpg", src / "loop_a.jpg")
    os.symlink("loop_a.jpg", src / "loop_b.jpg")
    os.symlink(tmp / "nowhere.jpg", src / "dangling.jpg")
    os.symlink("/dev/zero", src / "zero.jpg")
    (src / "unlisted.jpg").write_bytes(jpeg((5, 5, 5)))
    rows = [
        ("good_a.jpg", "red"),
        ("good_b.jpg", "green"),
        ("good_a.jpg", "green"),  # duplicate row: rejected, counted
        ("bomb.png", "red"),
        ("strip.png", "red"),
        ("big.jpg", "red"),
        ("nonutf8_\xe9.jpg", "blue"),
        ("fifo.jpg", "red"),
        ("loop_a.jpg", "red"),
        ("dangling.jpg", "red"),
        ("zero.jpg", "red"),
        ("/dev/zero", "red"),
        ("../outside/secret.jpg", "red"),
        (str(outside / "secret.jpg"), "red"),
    ]
    # Latin-1 CSV with a BOM-free header: the é names the Latin-1 file on disk
    labels = tmp / "labels.csv"
    labels.write_bytes(("filename,label\n" + "".join(f"{n},{lab}\n" for n, lab in rows)).encode("latin-1"))
    out = tmp / "out"
    cmd = [sys.executable, "-m", "preprocess.cli", "shard", src, out, "--labels", labels, "--size", SIZE]
    cmd += [
        "--max-bytes",
        "4000",
        "--max-pixels",
        "10000000",
        "--shard-size",
        "5",
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return src, out, proc


def test_every_row_is_found_and_written_or_rejected(hostile):
    _, out, proc = hostile
    assert summary_counts(proc.stdout) == (14, 3, 11)
    assert "Traceback" not in proc.stderr


def test_pixel_bombs_are_rejected_from_the_header(hostile):
    r = rejects(hostile[1])
    assert "over the --max-pixels limit" in r["bomb.png"] and "60000x60000" in r["bomb.png"]
    assert "aspect ratio" in r["strip.png"] and "1x65000" in r["strip.png"]


def test_size_cap_and_only_regular_files(hostile):
    r = rejects(hostile[1])
    assert "over the --max-bytes limit 4,000" in r["big.jpg"]
    assert r["fifo.jpg"] == "not a regular file (a FIFO)"
    assert r["zero.jpg"] == "not a regular file (a character device)"
    assert "symbolic links" in r["loop_a.jpg"]
    assert r["dangling.jpg"].startswith("unreadable: No such file")


def test_rows_outside_src_are_rejected_not_read(hostile):
    src, out, proc = hostile
    r = rejects(out)
    for row in ("../outside/secret.jpg", str(src.parent / "outside" / "secret.jpg"), "/dev/zero"):
        assert r[row].startswith("outside SRC"), row
    assert "rejected" in proc.stdout and "outside SRC rejected" in proc.stdout


def test_duplicates_and_unlisted_files_are_reported(hostile):
    _, out, proc = hostile
    assert rejects(out)["good_a.jpg"] == "duplicate: row 1 names the same file"
    assert written(out)["good_a.jpg"]["label"] == 2  # the first row's label: red (blue 0, green 1, red 2)
    assert "1 duplicate row(s) rejected" in proc.stdout
    # unlisted.jpg and loop_b.jpg (the loop's other end): reported, not sharded
    assert "2 image file(s) in SRC not in the labels (not sharded), e.g. loop_b.jpg" in proc.stdout


def test_non_utf8_name_is_written_hex_escaped(hostile):
    _, out, _ = hostile
    rows = written(out)
    assert "nonutf8_\\xe9.jpg" in rows  # the Latin-1 byte 0xE9 as the text \xe9
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == ["blue", "green", "red"]  # no class from a rejected row
    assert alexprep("verify", out, "--quiet").returncode == 0


# ---- CSV and metadata files -------------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg((200, 0, 0)))
    (src / "b.jpg").write_bytes(jpeg((0, 200, 0)))
    return src


def test_bom_csv_makes_no_phantom_class(two_images, tmp_path):
    labels = tmp_path / "bom.csv"
    labels.write_bytes("\ufefffilename,label\na.jpg,cat\nb.jpg,dog\n".encode())
    proc = alexprep("shard", two_images, tmp_path / "out", "--labels", labels, "--size", SIZE, "--quiet")
    assert summary_counts(proc.stdout) == (2, 2, 0)
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [c["name"] for c in classes] == ["cat", "dog"]


def test_csv_names_absolute_under_src_quoted_newlines_and_spaces_are_read(two_images, tmp_path):
    src = two_images
    for name in ("new\nline.jpg", " lead.jpg", "c.jpg"):
        (src / name).write_bytes(jpeg((9, 9, 200)))
    via = tmp_path / "via"
    via.symlink_to(src)  # SRC given through a link, rows naming the real folder, and the other way
    labels = tmp_path / "l.csv"
    labels.write_text(
        f'filename,label\n{src / "a.jpg"},cat\n{via / "b.jpg"}, dog\n"new\nline.jpg",cat\n'
        f'" lead.jpg",dog\nc.jpg ,cat\n{src}/x/../b.jpg,dog\n'  # `..`: refused, absolute or not
    )
    proc = alexprep("shard", via, tmp_path / "out", "--labels", labels, "--size", SIZE, "--quiet")
    assert summary_counts(proc.stdout) == (6, 5, 1), proc.stdout
    assert rejects(tmp_path / "out")[f"{src}/x/../b.jpg"].startswith("outside SRC")
    assert set(written(tmp_path / "out")) == {"a.jpg", "b.jpg", "new\nline.jpg", " lead.jpg", "c.jpg"}


def test_a_dataset_with_every_input_rejected_is_an_error_not_complete(two_images, tmp_path):
    labels = write_labels(tmp_path / "l.csv", ["A.JPG", "b.jpeg"])  # names of no file in SRC
    out = tmp_path / "out"
    proc = alexprep("shard", two_images, out, "--labels", labels, "--size", SIZE, "--quiet", check=False)
    assert proc.returncode == 2 and "\ncomplete:" not in proc.stdout, proc.stdout
    assert "every one of the 2 input(s) was rejected" in proc.stderr and "holds no image" in proc.stderr
    assert "rejected: A.JPG: unreadable: No such file" in proc.stdout  # and why, as always
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_split_must_be_a_plain_name(two_images, tmp_path):
    labels = write_labels(tmp_path / "l.csv", ["a.jpg", "b.jpg"])
    out = tmp_path / "deep" / "out"
    for split in ("../escaped", str(tmp_path / "abs"), "a/b", ".."):
        proc = alexprep("shard", two_images, out, "--labels", labels, "--split", split, check=False)
        assert proc.returncode == 2 and "a split is a plain name" in proc.stderr, split
        assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.csv", "src"]  # nothing written anywhere


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("synsets", b"\x00\x01\x02binary\xff", "binary"),
        ("loc", b"ImageId,Other\nILSVRC2012_val_00000001,x\n", "expected columns ImageId,PredictionString"),
        ("loc", b"ImageId,PredictionString\nILSVRC2012_val_00000001,\n", "row without a PredictionString"),
        ("meta", b"MATLAB 5.0 garbage" + b"\x00" * 200, "not a devkit meta.mat"),
    ],
)
def test_broken_metadata_files_are_one_line_errors(tmp_path, name, content, message):
    src = tmp_path / "src"
    (src / "train" / "n00000001").mkdir(parents=True)
    (src / "train" / "n00000001" / "a.JPEG").write_bytes(jpeg((1, 1, 1)))
    (src / "val").mkdir()
    (src / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(jpeg((1, 1, 1)))
    args = []
    if name == "synsets":
        (tmp_path / "syn.txt").write_bytes(content)
        args = ["--synsets", tmp_path / "syn.txt"]
    elif name == "loc":
        (src / "LOC_val_solution.csv").write_bytes(content)
    else:
        devkit = src / "ILSVRC2012_devkit_t12" / "data"
        devkit.mkdir(parents=True)
        (devkit / "meta.mat").write_bytes(content)
        (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    proc = alexprep("shard", src, tmp_path / "out", *args, "--quiet", check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# ---- OUT problems -----------------------------------------------------------------------------


def test_bad_out_is_a_one_line_error(two_images, tmp_path):
    labels = write_labels(tmp_path / "l.csv", ["a.jpg", "b.jpg"])
    (tmp_path / "afile").write_text("x")
    garbage, listed = tmp_path / "garbage", tmp_path / "listed"
    for d, text in ((garbage, "{not json"), (listed, "[1, 2]")):
        d.mkdir()
        (d / "dataset.json").write_text(text)
    cases = [
        (tmp_path / "afile", "exists and is not a folder"),
        (tmp_path / "afile" / "out", "a parent of it is a file"),
        (garbage, "not valid JSON"),
        (listed, "expected a JSON dict, found a list"),
        (two_images, "OUT must not be SRC"),
    ]
    for out, message in cases:
        proc = alexprep("shard", two_images, out, "--labels", labels, "--size", SIZE, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (out, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    for out in (garbage, listed):
        proc = alexprep("verify", out, check=False)
        assert proc.returncode == 2 and "dataset.json" in proc.stderr and "Traceback" not in proc.stderr
    for command in ("verify", "pca-stats"):  # a file, not a dataset without its dataset.json
        proc = alexprep(command, tmp_path / "afile", check=False)
        assert proc.returncode == 2 and "afile: not a folder" in proc.stderr, (command, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_out_inside_src_is_not_walked(tmp_path):
    src = tmp_path / "src"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            (src / cls / f"{i}.jpg").write_bytes(jpeg((i * 40, 9, 9)))
    out = src / "shards"
    first = alexprep("shard", src, out, "--size", SIZE, "--quiet")
    again = alexprep("shard", src, out, "--size", SIZE, "--quiet")
    assert summary_counts(first.stdout) == summary_counts(again.stdout) == (6, 6, 0)
    assert "nothing to do" in again.stdout
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())] == ["cat", "dog"]


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> tuple[Path, Path, Path]:
    """40 real ImageNet samples at 32px, 4 shards of 10: (src labels, OUT, a pristine copy)."""
    tmp = tmp_path_factory.mktemp("small")
    labels = write_labels(tmp / "labels.csv", imagenet_files()[:40])
    out = tmp / "out"
    alexprep("shard", IMAGENET, out, "--labels", labels, "--size", SIZE, "--shard-size", 10, "--quiet")
    pristine = tmp / "pristine"
    shutil.copytree(out, pristine)
    return labels, out, pristine


def _copy(small_shards, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(small_shards[2], out)
    return out


def test_read_only_complete_out_reruns_and_verifies_without_writing(small_shards, tmp_path):
    labels, _, _ = small_shards
    out = _copy(small_shards, tmp_path)
    (out / "verified.json").unlink(missing_ok=True)
    before = snapshot(out)
    for p in [out, *out.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        proc = alexprep(
            "shard", IMAGENET, out, "--labels", labels, "--size", SIZE, "--shard-size", 10, "--quiet"
        )
        assert "nothing to do" in proc.stdout and summary_counts(proc.stdout) == (40, 40, 0)
        assert alexprep("verify", out, "--quiet").returncode == 0
    finally:
        for p in [out, *out.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    if os.geteuid() != 0:  # root writes through permissions: there the snapshot is the check
        assert snapshot(out) == before
    else:
        assert {k: v for k, v in snapshot(out).items() if k != "verified.json"} == before


# ---- verify, preflight, repair ----------------------------------------------------------------


def _member(out: Path, shard: str, sample: int, ext: str):
    tar = out / "train" / f"{shard}.tar"
    return tar, next(m for m in read_index(tar.with_suffix(".idx"))[sample] if m.ext == ext)


def _flip(tar: Path, offset: int) -> None:
    data = bytearray(tar.read_bytes())
    data[offset] ^= 0x01
    tar.write_bytes(bytes(data))


def test_verify_catches_a_flipped_byte_in_a_json_member(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    tar, m = _member(out, "train-000001", 3, "json")
    _flip(tar, m.offset + 2)
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 1
    assert f"train-000001.tar: {m.name.split('.')[0]}: .json member differs from the manifest" in proc.stdout
    assert proc.stdout.count("\n") == 1  # named once, by sample


def test_verify_catches_a_flipped_padding_byte_that_no_member_holds(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    tar, m = _member(out, "train-000002", 5, "cls")  # a 1-3 byte member, then zero padding
    _flip(tar, m.offset + m.size + 1)
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 1
    assert proc.stdout == "train-000002.tar: SHA-256 differs from the one recorded when it was written\n"


def test_verify_reports_a_shard_that_is_a_link_and_a_garbage_manifest(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    tar = out / "train" / "train-000002.tar"
    moved = tmp_path / "elsewhere.tar"
    tar.rename(moved)
    tar.symlink_to(moved)  # same bytes, but a link: not part of a dataset
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 1 and "train-000002.tar: is a symbolic link" in proc.stdout
    (out / "train" / "manifest.parquet").write_bytes(b"PAR1 garbage")
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 2 and "manifest.parquet: not a readable manifest" in proc.stderr
    (out / "train" / "manifest.parquet").unlink()
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 2 and "manifest.parquet: missing" in proc.stderr


@pytest.mark.parametrize("damage", ["garbage", "a row dropped", "a label edited", "deleted"])
def test_a_rerun_rebuilds_a_damaged_or_edited_manifest_from_the_parts(small_shards, tmp_path, damage):
    labels, _, pristine = small_shards
    out = _copy(small_shards, tmp_path)
    manifest = out / "train" / "manifest.parquet"
    table = pq.read_table(manifest)
    if damage == "garbage":
        manifest.write_bytes(b"PAR1 garbage")
    elif damage == "deleted":
        manifest.unlink()
    else:  # edited with pyarrow: a readable manifest that is not the shards'
        edited = table.slice(1) if damage == "a row dropped" else table.set_column(
            1, "label", pa.array([1 - v for v in table["label"].to_pylist()], pa.int32())
        )  # fmt: skip
        pq.write_table(edited, manifest)
    assert alexprep("verify", out, "--quiet", check=False).returncode != 0
    args = ("shard", IMAGENET, out, "--labels", labels, "--size", SIZE, "--shard-size", 10, "--quiet")
    proc = alexprep(*args)
    why = "missing" if damage == "deleted" else "not the bytes written: damaged or edited"
    assert f"rebuilt from the shards' parts: train/manifest.parquet ({why})" in proc.stdout, proc.stdout
    assert "nothing to do" not in proc.stdout and "\ncomplete:" in proc.stdout
    assert manifest.read_bytes() == (pristine / "train" / "manifest.parquet").read_bytes()
    assert alexprep("verify", out, "--quiet").returncode == 0
    again = alexprep(*args)
    assert "nothing to do" in again.stdout and "rebuilt" not in again.stdout


def test_preflight_catches_truncation_fast_and_a_flipped_byte_when_full(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    preflight(out, ["train"], full=True)  # intact
    tar, m = _member(out, "train-000003", 2, "jpg")
    _flip(tar, m.offset + m.size // 2)
    with pytest.raises(
        DamagedDataError, match=r"train-000003\.tar: .*checksum mismatch.*--redo-shard train-000003"
    ):
        preflight(out, ["train"], full=True)
    shutil.copy(small_shards[2] / "train" / "train-000003.tar", tar)
    with open(out / "train" / "train-000001.tar", "r+b") as f:
        f.truncate(5000)
    start = time.perf_counter()
    with pytest.raises(DamagedDataError, match=r"train-000001\.tar: 5,000 bytes, [\d,]+ were written") as e:
        preflight(out, ["train"])
    assert time.perf_counter() - start < 0.5
    # found before any tar was read: the others' contents are unknown, and verify is the way to all
    assert f"Repair: run `alexprep verify {out}` to find every damaged shard" in str(e.value)


def test_preflight_trusts_verify_only_while_the_files_are_unchanged(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    assert alexprep("verify", out, "--quiet").returncode == 0
    assert json.loads((out / "verified.json").read_text())["files"]
    tar, m = _member(out, "train-000000", 0, "cls")
    _flip(tar, m.offset)  # same size, new mtime: verified.json no longer vouches for it
    with pytest.raises(DamagedDataError, match=r"train-000000\.tar: \d+: \.cls member differs"):
        preflight(out, ["train"])


def test_preflight_hashes_once_says_so_and_one_process_per_host_does_it(small_shards, tmp_path, capsys):
    """Unverified shards are hashed at the first start (announced, with a bar: on ImageNet it
    takes minutes); a clean pass is remembered, so a restart (compose's restart: on-failure) does
    not repeat it; the other processes of a host do only the structural check."""
    out = _copy(small_shards, tmp_path)
    (out / "verified.json").unlink(missing_ok=True)
    said: list[str] = []
    preflight(out, ["train"], say=said.append, progress=True)
    tars = list((out / "train").glob("*.tar"))
    size = tqdm.format_sizeof(sum(t.stat().st_size for t in tars), "B", 1000)  # kB here: not "0.0 GB"
    assert len(said) == 1 and f"hashing {len(tars)} shards ({size}) against" in said[0], said
    assert "alexprep verify" in said[0] and size.endswith("kB"), said
    bar = [ln for ln in re.split(r"[\r\n]", capsys.readouterr().err) if ln.strip()][-1]  # left on screen
    assert bar.startswith("hashing: 100%") and "B/s]" in bar, bar
    assert json.loads((out / "verified.json").read_text())["files"]
    preflight(out, ["train"], say=said.append)
    assert len(said) == 1  # vouched for now: no second pass
    tar, m = _member(out, "train-000002", 1, "jpg")
    _flip(tar, m.offset + m.size // 2)  # same size, new mtime
    preflight(out, ["train"], hash_files=False)  # another process of this host: structure only
    with pytest.raises(DamagedDataError, match=r"train-000002\.tar"):
        preflight(out, ["train"], say=said.append)
    assert len(said) == 2


def test_a_shard_with_many_damaged_samples_is_one_readable_line(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    for sample in range(7):
        tar, m = _member(out, "train-000001", sample, "jpg")
        _flip(tar, m.offset + m.size // 2)
    with pytest.raises(DamagedDataError) as e:
        preflight(out, ["train"], full=True)
    why = str(e.value)
    assert why.count("checksum mismatch") == 5 and "\n" not in why, why
    assert f"and 2 more (`alexprep verify {out}` lists every one)" in why
    assert "--redo-shard train-000001" in why
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 1 and proc.stdout.count("train-000001.tar: ") >= 7, proc.stdout


def test_redo_shard_repairs_byte_identically_and_planted_links_are_replaced(small_shards, tmp_path):
    labels, _, pristine = small_shards
    out = _copy(small_shards, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    tar, m = _member(out, "train-000001", 0, "jpg")
    _flip(tar, m.offset + 10)
    (out / "train" / "train-000002.tar").unlink()
    (out / "train" / "train-000002.tar").symlink_to(victim)  # a link planted at a shard's name
    args = ["--labels", labels, "--size", SIZE, "--shard-size", 10, "--quiet"]
    proc = alexprep("shard", IMAGENET, out, *args, "--redo-shard", "train-000001")
    assert "shards written now: 2, already complete: 2" in proc.stdout  # 000002 redone: not a file
    assert victim.read_text() == "must survive"
    assert not (out / "train" / "train-000002.tar").is_symlink()
    for f in ("train-000001.tar", "train-000002.tar", "manifest.parquet"):
        assert (out / "train" / f).read_bytes() == (pristine / "train" / f).read_bytes(), f
    assert "changed source files" not in proc.stderr  # the same files: the same images
    proc = alexprep("shard", IMAGENET, out, *args, "--redo-shard", "train-000099", check=False)
    assert proc.returncode == 2 and "no such shard" in proc.stderr


def test_a_shard_redone_from_a_changed_source_is_said_and_the_old_stats_refused(tmp_path):
    from pipeline.augment import StatsError, load_stats

    files, src, out = imagenet_files()[:12], tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for f in files:
        shutil.copy(IMAGENET / f, src / f)
    args = ("shard", src, out, "--labels", write_labels(tmp_path / "l.csv", files), "--size", SIZE)
    alexprep(*args, "--shard-size", 4, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    load_stats(out)  # they fit
    rows = pq.read_table(out / "train" / "manifest.parquet").to_pylist()
    shard = next(r["shard"] for r in rows if r["source"] == files[0]).removesuffix(".tar")
    shutil.copy(IMAGENET / imagenet_files()[40], src / files[0])  # the same name, another picture
    proc = alexprep(*args, "--shard-size", 4, "--quiet", "--redo-shard", shard)
    assert "warning: redone from changed source files" in proc.stderr, proc.stderr
    assert f"{shard}: 1 of 4 images not as before (e.g. {files[0]})" in proc.stderr
    with pytest.raises(StatsError, match="computed from other train images than the shards now hold"):
        load_stats(out)
    alexprep("pca-stats", out, "--quiet")
    load_stats(out)


def test_pca_stats_names_the_truncated_shard_and_the_undecodable_sample(small_shards, tmp_path):
    out = _copy(small_shards, tmp_path)
    with open(out / "train" / "train-000002.tar", "r+b") as f:
        f.truncate(3000)
    proc = alexprep("pca-stats", out, "--quiet", check=False)
    assert proc.returncode == 2 and "train-000002.tar: 3,000 bytes" in proc.stderr
    assert "--redo-shard train-000002" in proc.stderr and "Traceback" not in proc.stderr
    shutil.copy(small_shards[2] / "train" / "train-000002.tar", out / "train" / "train-000002.tar")
    tar, m = _member(out, "train-000000", 4, "jpg")
    data = bytearray(tar.read_bytes())
    data[m.offset : m.offset + m.size] = b"\0" * m.size  # same size: only decoding can tell
    tar.write_bytes(bytes(data))
    proc = alexprep("pca-stats", out, "--quiet", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"train-000000.tar: sample {m.name.split('.')[0]}: stored JPEG does not decode" in proc.stderr


# ---- concurrency and temporary files ------------------------------------------------------------


def test_temporary_files_are_exclusive_and_never_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    final = tmp_path / "x.json"
    tmp = layout.tmp_path(final)
    assert tmp != layout.tmp_path(final) and str(os.getpid()) in tmp.name  # unique per call and process
    tmp.symlink_to(target)
    with pytest.raises(FileExistsError):
        layout.open_exclusive(tmp)  # a planted link, even at our exact name, is refused
    layout.write_json(final, {"a": 1})
    assert target.read_text() == "keep" and json.loads(final.read_text()) == {"a": 1}


@pytest.mark.slow  # two real shard processes
def test_two_concurrent_runs_one_is_refused_and_the_result_is_intact(tmp_path):
    labels = write_labels(tmp_path / "labels.csv", imagenet_files()[:300])
    out = tmp_path / "out"
    args = ["shard", IMAGENET, out, "--labels", labels, "--size", SIZE, "--shard-size", 10, "--workers", 1]
    cmd = [sys.executable, "-m", "preprocess.cli", *map(str, args), "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "train" / "parts").glob("*.parquet")):
        time.sleep(0.02)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    first_out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stdout
    assert "another `alexprep shard`" in second.stderr and f"pid {first.pid}" in second.stderr
    assert summary_counts(first_out) == (300, 300, 0)
    assert alexprep("verify", out, "--quiet").returncode == 0
    assert not [p for p in out.rglob("*.tmp")]


def test_shard_never_imports_torch(tmp_path, two_images):
    labels = write_labels(tmp_path / "l.csv", ["a.jpg", "b.jpg"])
    code = (
        "import sys\n"
        "from preprocess.cli import main\n"
        f"try:\n    main(['shard', {str(two_images)!r}, {str(tmp_path / 'o')!r}, '--labels', {str(labels)!r},"
        f" '--size', '32', '--quiet'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'webdataset')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_shard_help_shows_the_image_limits():
    help_text = alexprep("shard", "--help").stdout
    assert "--max-pixels" in help_text and "100000000" in help_text and "67108864" in help_text


def test_two_nodes_on_one_shared_out_at_once_give_the_single_node_dataset(small_shards, tmp_path):
    labels, _, pristine = small_shards
    out = tmp_path / "shared-out"
    args = ["shard", IMAGENET, out, "--labels", labels, "--size", SIZE, "--shard-size", 10, "--workers", 1]
    cmd = [sys.executable, "-m", "preprocess.cli", *map(str, args), "--quiet", "--num-nodes", "2"]
    nodes = [
        subprocess.Popen(
            [*cmd, "--node-rank", str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    for p in nodes:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
    # whichever node finished last merged; either way the dataset is complete and identical
    assert json.loads((out / "dataset.json").read_text())["complete"]
    for f in [
        "classes.json",
        "dataset.json",
        "train/manifest.parquet",
        *(f"train/train-00000{i}.tar" for i in range(4)),
    ]:
        assert (out / f).read_bytes() == (pristine / f).read_bytes(), f
    assert not [p for p in out.rglob("*.tmp")]


def _create_at_once(path: str, value: int, barrier, results) -> None:  # noqa: ANN001
    barrier.wait()
    results.put((value, layout.create_json(Path(path), {"value": value})))


def test_of_processes_creating_one_json_at_once_exactly_one_wins_and_its_file_stays(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    path, barrier, results = tmp_path / "claim.json", ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_create_at_once, args=(str(path), v, barrier, results)) for v in range(4)]
    for p in procs:
        p.start()
    won = [v for v, ok in (results.get(timeout=60) for _ in procs) if ok]
    for p in procs:
        p.join(timeout=60)
    assert len(won) == 1 and json.loads(path.read_text()) == {"value": won[0]}
    assert [p.name for p in tmp_path.iterdir()] == ["claim.json"]  # no temporary file left


def test_two_nodes_with_other_settings_started_at_once_never_both_write(small_shards, tmp_path):
    labels, _, _ = small_shards
    for trial in range(3):  # before the claim, 1 start in 4 let both nodes write (issue found by a probe)
        out = tmp_path / f"out{trial}"
        args = ["shard", IMAGENET, out, "--labels", labels, "--shard-size", 10, "--workers", 1, "--quiet"]
        cmd = [sys.executable, "-m", "preprocess.cli", *map(str, args), "--num-nodes", "2"]
        nodes = [
            subprocess.Popen([*cmd, "--node-rank", r, "--size", size], stderr=subprocess.PIPE, text=True)
            for r, size in (("0", "32"), ("1", "24"))
        ]
        codes = [(p.wait(timeout=120), p.stderr.read()) for p in nodes]
        ok = [size for (code, _), size in zip(codes, (32, 24), strict=True) if code == 0]  # a node's share
        assert len(ok) == 1, codes
        assert json.loads((out / "dataset.json").read_text())["size"] == ok[0]
        refused = next(err for code, err in codes if code != 0)
        assert "holds a different dataset (--size: OUT" in refused, refused


def test_a_split_folder_replaced_by_a_link_is_refused_not_followed(two_images, tmp_path):
    labels = write_labels(tmp_path / "l.csv", ["a.jpg", "b.jpg"])
    out, outside = tmp_path / "out", tmp_path / "outside"
    alexprep("shard", two_images, out, "--labels", labels, "--size", SIZE, "--quiet")
    shutil.rmtree(out / "train")
    outside.mkdir()
    (out / "train").symlink_to(outside)
    proc = alexprep("shard", two_images, out, "--labels", labels, "--size", SIZE, "--quiet", check=False)
    assert proc.returncode == 2 and "train: is a symbolic link" in proc.stderr, proc.stderr
    assert list(outside.iterdir()) == []


def test_links_and_fifos_in_class_folders_are_counted_and_rejected(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "ok.jpg").write_bytes(jpeg((9, 99, 9)))
    os.mkfifo(src / "cat" / "fifo.jpg")
    os.symlink(tmp_path / "gone.jpg", src / "cat" / "dangling.jpg")
    os.symlink("loop.jpg", src / "cat" / "loop.jpg")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess.cli",
            "shard",
            str(src),
            str(tmp_path / "out"),
            "--size",
            SIZE,
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert summary_counts(proc.stdout) == (4, 1, 3)
    r = rejects(tmp_path / "out")
    assert r["cat/fifo.jpg"] == "not a regular file (a FIFO)"
    assert r["cat/dangling.jpg"].startswith("unreadable") and "symbolic links" in r["cat/loop.jpg"]


def test_names_are_shown_as_valid_utf8_whatever_their_surrogates():
    """A file name's non-UTF-8 bytes arrive as U+DC80-DCFF (surrogateescape) and are shown as
    \\xNN; any other lone surrogate (a \\ud800 escape in a JSON label) raised UnicodeEncodeError
    in every table and JSON output once names went through clean_name."""
    from preprocess.walk import clean_name, printable

    assert clean_name(os.fsdecode(b"a\xffb.jpg")) == "a\\xffb.jpg"
    assert clean_name("a\ud800b\udcffc\udfff") == "a\\ud800b\\xffc\\udfff"
    assert printable("x\ud800\ny\udcfe") == "x\\ud800\\ny\\xfe"
    for text in ("a\ud800", "\udc00", "plain"):
        clean_name(text).encode("utf-8")  # strict: no surrogate left
