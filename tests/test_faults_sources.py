"""What `alexprep shard` reads and refuses (issue 21, classes 4-6): complete JPEGs with a
trailer, images in sub-folders and hidden folders, classes with no image, a classes.json that is
not the manifest's."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from preprocess.image import RejectedImage, jpeg_complete, process
from tests.conftest import IMAGENET, alexprep, alextrain
from tests.faults_common import jpeg, make_dataset, make_source


def _progressive(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 48), 60).convert("RGB").save(buf, "JPEG", progressive=True, quality=80)
    return buf.getvalue()


def _real() -> bytes:
    files = sorted(IMAGENET.glob("*.JPEG"))
    if not files:
        pytest.skip("no ImageNet samples")
    return files[0].read_bytes()


@pytest.mark.parametrize(
    "make, trailer",
    [
        (_real, b"\n"),  # a trailing newline
        (_real, b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4),  # a motion photo's video
        (lambda: _progressive((1, 2, 3)), b"\r\n\xff\xd8 junk"),  # not in the list: progressive
    ],
)
def test_a_complete_jpeg_with_bytes_after_its_end_is_accepted(make, trailer):
    data = make()
    whole = process(data, 32)
    assert process(data + trailer, 32) == whole  # the same sample: the trailer is not read


@pytest.mark.parametrize("make", [_real, lambda: _progressive((1, 2, 3))])
@pytest.mark.parametrize("cut", [0.5, 0.9, -1])
def test_a_truncated_jpeg_is_still_rejected(make, cut):
    data = make()
    short = data[:cut] if cut == -1 else data[: int(len(data) * cut)]
    assert jpeg_complete(data) and not jpeg_complete(short)
    with pytest.raises(RejectedImage, match="truncated JPEG"):
        process(short, 32)
    with pytest.raises(RejectedImage, match="truncated JPEG"):
        process(short + b"\x00" * 64, 32)  # zero-padded: still cut inside the scan


def _summary(proc) -> dict[str, str]:  # noqa: ANN001
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()}


def test_images_in_sub_folders_and_folder_links_are_read_and_hidden_folders_counted(tmp_path):
    src = tmp_path / "src"
    for rel in ("train/cat/a.jpg", "train/cat/sub/b.jpg", "train/cat/sub/deeper/c.jpg", "train/dog/d.jpg"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg((len(rel) * 7 % 255, 40, 90)))
    hidden = ["train/.cache/e.jpg", "train/.cache/f.jpg", "train/dog/.thumbs/g.jpg"]  # last: not in the list
    for rel in hidden:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg((5, 5, 5)))
    (src / "train" / "dog" / "linked").symlink_to(src / "train" / "cat" / "sub")  # a link farm: read
    (src / "train" / "dog" / "again").symlink_to(src / "train" / "dog")  # a loop
    (src / "train" / "dog" / "up").symlink_to(src)  # above the class: every class, and a loop
    (src / "train" / "cat" / "inner").symlink_to(src / "train" / "cat" / "sub" / "deeper")  # own tree
    for i in range(4):  # siblings linked to each other: each real folder once, not n! paths
        (src / "train" / "emu" / f"s{i}").mkdir(parents=True)
        (src / "train" / "emu" / f"s{i}" / "e.jpg").write_bytes(jpeg((i * 50, 9, 9)))
    for i in range(4):
        for j in range(4):
            if i != j:
                (src / "train" / "emu" / f"s{i}" / f"to{j}").symlink_to(src / "train" / "emu" / f"s{j}")
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, "--quiet")
    s = _summary(proc)
    # cat: a, b, c; dog: d, and b and c once more through its link farm; emu: its 4 images once
    assert s["train"] == "found 10, written 10, rejected 0", proc.stdout
    assert "3 file(s) not read: hidden or not an image suffix" in s["layout"], proc.stdout
    # again, up, inner, and emu's 12 links: to folders its class reads already (each one once)
    assert "15 folder link(s) not followed: each leads to a folder above it or one its class" in s["layout"]
    assert "(e.g. train/cat/inner)" in s["layout"], proc.stdout
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [c["name"] for c in classes] == ["cat", "dog", "emu"]


@pytest.mark.parametrize("kind", ["empty", "only-hidden", "only-val", "all-rejected"])  # only-*: not listed
def test_a_class_without_a_training_image_is_said_and_refused_by_run(tmp_path, kind):
    src = tmp_path / "src"
    for split, cls in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "dog")):
        (src / split / cls).mkdir(parents=True)
        for i in range(4 if split == "train" else 1):
            (src / split / cls / f"{i}.jpg").write_bytes(jpeg((30 * i, 9 if cls == "cat" else 99, 9)))
    emu = src / ("val" if kind == "only-val" else "train") / "emu"
    emu.mkdir()
    if kind == "only-hidden":
        (emu / ".x").mkdir()
        (emu / ".x" / "a.jpg").write_bytes(jpeg((9, 9, 9)))
    elif kind in ("only-val", "all-rejected"):
        for i in range(2):
            (emu / f"{i}.jpg").write_bytes(jpeg((9, 9, 9)) if kind == "only-val" else b"")
    out = tmp_path / "out"
    proc = alexprep("shard", src, out, "--size", 32, "--quiet")
    assert "1 class(es) with no training image written (e.g. emu" in proc.stderr, proc.stderr
    if kind != "all-rejected":  # one `run` suffices: the check reads only the manifest
        return
    alexprep("pca-stats", out, "--quiet")
    run = alextrain(
        "run", "--data", out, "--out", tmp_path / "run", "--arch", "cifar", "--global-batch", 2,
        "--device", "cpu", "--quiet", check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "1 class(es) have no train image (e.g. 'emu'" in run.stderr, run.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loader", ["dali", "reference"])
def test_a_split_whose_every_image_was_rejected_is_refused_by_name(tmp_path, loader):
    """A split written with 0 images: DALI failed on it as if a shard were damaged (which
    verify denied), the reference loader scored 0 of 0 as 100 % val error and trained on."""
    src = make_source(tmp_path / "src", train=4, val=1, classes=2)
    shutil.copytree(src / "val", src / "test")
    for f in (src / "val").rglob("*.jpg"):
        f.write_bytes(b"")
    out = tmp_path / "out"
    alexprep("shard", src, out, "--size", 32, "--workers", 1, "--quiet", check=False)
    alexprep("pca-stats", out, "--workers", 1, "--quiet")
    said = f"{out}/val: the val split holds no image (none was found or every one was rejected"
    args = ("--arch", "cifar", "--global-batch", 4, "--loader", loader, "--device", "cpu", "--quiet")
    run = alextrain("run", "--data", out, "--out", tmp_path / "run", *args, check=False)
    assert run.returncode == 2 and said in run.stderr, run.stderr
    assert "; name another held-out split with --val-split, or re-shard" in run.stderr  # val was the default
    assert not (tmp_path / "run").exists()
    # named, another split serves; eval and neighbors refuse the empty one the same way
    alextrain("run", "--data", out, "--out", tmp_path / "run", *args, "--val-split", "test", "--epochs", 1)
    query = next((src / "test").rglob("*.jpg"))
    for cmd in (
        ("eval", "--data", out, "--checkpoint", tmp_path / "run", "--split", "val"),
        ("neighbors", tmp_path / "run", "--query", query, "--split", "val"),
    ):
        proc = alextrain(*cmd, "--device", "cpu", check=False)
        assert proc.returncode == 2 and said in proc.stderr, (cmd[0], proc.stderr)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sources"), stats=False, classes=6, train=2)


def test_a_shortened_classes_json_fails_verify_and_run(data, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(data, out)
    classes = json.loads((out / "classes.json").read_text())
    (out / "classes.json").write_text(json.dumps(classes[:5]))
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode != 0 and "lists 5 classes, dataset.json says 6" in proc.stderr, proc.stderr
    run = alextrain("run", "--data", out, "--out", tmp_path / "run", "--arch", "cifar", check=False)
    assert run.returncode == 2 and "lists 5 classes, dataset.json says 6" in run.stderr, run.stderr


def test_classes_json_and_dataset_json_both_shortened_fail_verify(data, tmp_path):
    # not in the list: the two files agree with each other, not with the shards' labels
    out = tmp_path / "out"
    shutil.copytree(data, out)
    classes = json.loads((out / "classes.json").read_text())
    (out / "classes.json").write_text(json.dumps(classes[:5]))
    meta = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**meta, "num_classes": 5}))
    proc = alexprep("verify", out, "--quiet", check=False)
    assert (
        proc.returncode != 0
        and "manifest labels 5 are not classes of classes.json" in proc.stdout + proc.stderr
    )


@pytest.mark.parametrize(
    "layout, strays, said",
    [
        ("<class>", ["0000.jpg"], "1 image file(s) not read: not inside a class folder (e.g. 0000.jpg)"),
        (
            "<split>/<class>",
            ["top.jpg", "extra/0003.jpg", "extra/deeper/0004.jpg"],
            "3 image file(s) not read: not under train/ or val/ (e.g. extra/0003.jpg)",
        ),
        (
            "<split>/<class>",
            ["train/loose.jpg"],
            "not read: not inside a class folder (e.g. train/loose.jpg)",
        ),
    ],
)
def test_image_files_outside_the_layout_are_said_as_not_read(tmp_path, layout, strays, said):
    src = tmp_path / "src"
    prefix = "train/" if layout == "<split>/<class>" else ""
    images = [f"{prefix}{c}/{i}.jpg" for c in ("cat", "dog") for i in range(2)]
    if prefix:
        images.append("val/cat/v.jpg")
    for rel in images + strays:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg((len(rel) * 9 % 255, 60, 90)))
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, "--quiet")
    s = _summary(proc)
    assert s["train"] == "found 4, written 4, rejected 0", proc.stdout  # strays are not inputs...
    assert said in s["layout"], proc.stdout  # ...but are said, with why


def test_a_folder_without_images_beside_the_class_folders_is_not_a_class_nor_an_error(tmp_path):
    # SRC/cat/, SRC/dog/ and SRC/docs/notes.txt: refused as "class folder not present in the
    # class list" before (a fresh probe); the split layout makes it an empty class, warned
    src = tmp_path / "src"
    for rel in ("cat/0.jpg", "cat/1.jpg", "dog/0.jpg"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg((len(rel) * 40 % 255, 60, 90)))
    (src / "docs").mkdir()
    (src / "docs" / "notes.txt").write_text("how these were collected")
    (src / "empty").mkdir()
    out = tmp_path / "out"
    s = _summary(alexprep("shard", src, out, "--size", 16, "--quiet"))
    assert s["train"] == "found 3, written 3, rejected 0"
    assert "1 file(s) not read: hidden or not an image suffix (e.g. docs/notes.txt" in s["layout"]
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())] == ["cat", "dog"]


def test_an_ilsvrc_val_class_that_train_lacks_is_still_refused(tmp_path):
    # a folder WITH images that is no class stays an error (only a folder without images is passed over)
    src = tmp_path / "src"
    for rel in ("train/n00000001/a.JPEG", "val/n00000002/c.JPEG"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(jpeg((9, 90, 9)))
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, "--quiet", check=False)
    assert proc.returncode == 2 and "val/n00000002: class folder not present in the class list" in proc.stderr


def test_two_class_folders_written_alike_are_refused_not_merged(tmp_path):
    src = tmp_path / "src"
    raw = os.fsdecode(b"bad\xff")  # the byte 0xFF, not UTF-8: written as the text `bad\xff`
    for name in (raw, "bad\\xff", "ok"):  # the second: a backslash, then `xff`
        (src / name).mkdir(parents=True)
        (src / name / "a.jpg").write_bytes(jpeg((9, 90, 9)))
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, "--quiet", check=False)
    assert proc.returncode == 2, proc.stdout
    assert "class folders b'bad\\\\xff' and b'bad\\xff' would both be the class" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
