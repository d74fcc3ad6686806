"""`alexprep shard` and `alexprep verify` on real images and on generated bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from preprocess.image import RejectedImage, process, resize_center_crop
from shards.index import read_index
from tests.conftest import IMAGENET, alexprep, imagenet_files


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every data file's bytes; not the run's state (lock files, verify's record), which differ by run."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".alexprep-node") and p.name != "verified.json"
    }


def manifest(out: Path, split: str = "train") -> list[dict]:
    return pq.read_table(out / split / "manifest.parquet").to_pylist()


# ---- the image transform, by hand --------------------------------------------------------------


def test_resize_center_crop_geometry_by_hand():
    # 400x200 (w x h) -> shorter side 100 -> 200x100 -> central 100x100 starts at x=50
    img = np.zeros((200, 400, 3), np.uint8)
    img[:, 200:] = 255  # right half white
    out = resize_center_crop(img, 100)
    assert out.shape == (100, 100, 3)
    assert out[:, :49].max() == 0 and out[:, 51:].min() == 255  # the edge sits in the middle


def test_tar_is_byte_identical_to_webdatasets_tarwriter(tmp_path):
    wds = pytest.importorskip("webdataset")
    from shards.writer import ShardWriter, sample_json

    rng = np.random.default_rng(0)
    samples = [
        (f"{i:08d}", i % 7, f"s{i}.JPEG", rng.bytes(300 + 97 * i), 10 + i, 20, "n01440764") for i in range(12)
    ]
    writer = ShardWriter(tmp_path, "train", 0)
    ref = wds.TarWriter(str(tmp_path / "ref.tar"), encoder=False, mtime=0, user="alexnet", group="alexnet")
    for key, label, source, data, w, h, wnid in samples:
        writer.add(key, label, source, data, w, h, wnid)
        ref.write(
            {"__key__": key, "cls": str(label).encode(), "jpg": data, "json": sample_json(source, w, h, wnid)}
        )
    writer.commit()
    ref.close()
    assert (tmp_path / "train" / "train-000000.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()


def _checkerboard_jpeg(w: int, h: int) -> bytes:
    board = ((np.indices((h, w)).sum(0) % 2) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.merge([board] * 3), [cv2.IMWRITE_JPEG_QUALITY, 100])
    return buf.tobytes()


@pytest.mark.parametrize("w, h", [(1100, 1030), (2200, 2060)])  # DCT-reduced by 4 and by 8
def test_large_jpegs_decoded_at_reduced_scale_stay_antialiased(w, h):
    # a 1-pixel checkerboard: any sampling without averaging shows it as black/white moire
    data = _checkerboard_jpeg(w, h)
    enc = process(data, 256, 95)
    assert (enc.width, enc.height) == (w, h)  # the source's size, not the reduced one
    out = cv2.imdecode(np.frombuffer(enc.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).astype(float)
    assert abs(out.mean() - 127.5) < 4 and out.std() < 4
    # and the same picture as INTER_AREA from the full-size decode
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    reference = cv2.cvtColor(resize_center_crop(full, 256), cv2.COLOR_BGR2GRAY).astype(float)
    assert np.abs(out - reference).mean() < 4


# ---- real data: flat folder + labels, ILSVRC tree, CIFAR-10 ImageFolder -----------------------


def test_flat_imagenet_samples(imagenet_shards):
    out = imagenet_shards
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["complete"] and meta["layout"] == "flat"
    files = meta["splits"]["train"].pop("files")
    merged = {k: meta["splits"]["train"].pop(k) for k in ("manifest_sha256", "rejects_sha256")}
    assert meta["splits"]["train"] == {"found": 1000, "written": 1000, "rejected": 0, "shards": 4}
    assert (
        merged["manifest_sha256"]
        == hashlib.sha256((out / "train" / "manifest.parquet").read_bytes()).hexdigest()
    )
    # what each shard must be, recorded when written: the sizes on disk and the index's count
    assert sorted(files) == [f"train-00000{i}" for i in range(4)]
    for name, rec in files.items():
        assert rec["tar_bytes"] == (out / "train" / f"{name}.tar").stat().st_size
        assert rec["samples"] == len(read_index(out / "train" / f"{name}.idx"))
    assert sum(rec["samples"] for rec in files.values()) == 1000
    classes = json.loads((out / "classes.json").read_text())
    wnids = sorted({n.split("_", 1)[0] for n in imagenet_files()})
    assert [c["wnid"] for c in classes] == wnids  # sorted wnid order -> 0..999
    rows = manifest(out)
    assert len(rows) == 1000 and len({r["key"] for r in rows}) == 1000
    for r in rows:  # the label index is the file's own wnid
        assert classes[r["label"]]["wnid"] == r["source"].split("_", 1)[0]
    # globally shuffled: the shard order is not the sorted source order
    assert [r["source"] for r in rows] != sorted(r["source"] for r in rows)
    # each sample decodes to 256x256x3 and its json holds the original size
    tar = out / "train" / "train-000000.tar"
    first = read_index(tar.with_suffix(".idx"))[0]
    data = tar.read_bytes()
    parts = {m.ext: data[m.offset : m.offset + m.size] for m in first}
    img = cv2.imdecode(np.frombuffer(parts["jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (256, 256, 3)
    info = json.loads(parts["json"])
    src = cv2.imread(str(IMAGENET / info["source"]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert (info["width"], info["height"]) == (src.shape[1], src.shape[0])
    assert alexprep("verify", out, "--quiet").returncode == 0


def test_index_matches_dalis_wds2idx(imagenet_shards, tmp_path):
    wds2idx = shutil.which("wds2idx") or str(Path(sys.executable).parent / "wds2idx")
    tar = imagenet_shards / "train" / "train-000001.tar"
    subprocess.run([wds2idx, str(tar), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_bytes() == tar.with_suffix(".idx").read_bytes()


@pytest.mark.slow  # shards a full ILSVRC-shaped tree
def test_ilsvrc_tree_with_flat_val_and_loc_csv(tmp_path):
    names = imagenet_files()
    src = tmp_path / "ILSVRC2012"
    val_names = names[::10]  # 100 to val (flat, labelled by LOC_val_solution.csv)
    rows, mapping = ["ImageId,PredictionString"], []
    for i, n in enumerate(names):
        wnid = n.split("_", 1)[0]
        mapping.append(f"{wnid} {n.split('_', 1)[1].rsplit('.', 1)[0]}, other name")
        d = src / "train" / wnid
        d.mkdir(parents=True)
        if n in val_names:
            (src / "val").mkdir(exist_ok=True)
            vid = f"ILSVRC2012_val_{i:08d}"
            os.symlink(IMAGENET / n, src / "val" / f"{vid}.JPEG")
            rows.append(f"{vid},{wnid} 1 2 3 4")
        else:
            os.symlink(IMAGENET / n, d / n)
    (src / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (src / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")
    out = tmp_path / "out"
    proc = alexprep("shard", src, out, "--shard-size", 64, "--workers", 2, "--quiet")
    assert "layout: ilsvrc" in proc.stdout and "LOC_val_solution.csv" in proc.stdout
    classes = json.loads((out / "classes.json").read_text())
    assert len(classes) == 1000 and classes[0]["label"] == "tench, other name"
    val = manifest(out, "val")
    assert len(val) == 100
    # val keeps source order, and each val image got its own wnid's index
    assert [r["source"] for r in val] == sorted(r["source"] for r in val)
    by_vid = {f"val/ILSVRC2012_val_{i:08d}.JPEG": n for i, n in enumerate(names)}
    for r in val:
        assert classes[r["label"]]["wnid"] == by_vid[r["source"]].split("_", 1)[0]
    assert len(manifest(out, "train")) == 900


def test_ilsvrc_devkit_ids_are_not_sorted_wnid_order(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    names = imagenet_files()[:20]
    wnids = [n.split("_", 1)[0] for n in names]
    src = tmp_path / "src"
    for n, w in zip(names, wnids, strict=True):
        (src / "train" / w).mkdir(parents=True)
        os.symlink(IMAGENET / n, src / "train" / w / n)
    # devkit ids in *reverse* wnid order, as the real devkit's are not sorted wnid order
    devkit = src / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    synsets = np.zeros(20, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, w in enumerate(reversed(wnids)):
        synsets[i] = (i + 1, w, w)
    scipy_io.savemat(devkit / "meta.mat", {"synsets": synsets})
    (src / "val").mkdir()
    truth = []
    for i, (n, w) in enumerate(zip(names, wnids, strict=True)):
        os.symlink(IMAGENET / n, src / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        truth.append(str(20 - wnids.index(w)))  # the devkit id of this wnid
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(truth) + "\n")
    out = tmp_path / "out"
    proc = alexprep("shard", src, out, "--quiet")
    assert "devkit" in proc.stdout
    classes = json.loads((out / "classes.json").read_text())
    for r in manifest(out, "val"):
        i = int(r["source"].split("_")[-1].split(".")[0]) - 1
        assert classes[r["label"]]["wnid"] == wnids[i]


def test_cifar10_imagefolder_at_32(cifar_shards):
    meta = json.loads((cifar_shards / "dataset.json").read_text())
    assert meta["layout"] == "imagefolder" and meta["size"] == 32
    assert meta["splits"]["train"]["written"] == 50000
    assert meta["splits"]["test"]["written"] == 10000
    classes = json.loads((cifar_shards / "classes.json").read_text())
    assert [c["name"] for c in classes][:3] == ["airplane", "automobile", "bird"]
    test_rows = manifest(cifar_shards, "test")
    assert np.bincount([r["label"] for r in test_rows]).tolist() == [1000] * 10


# ---- bad inputs ---------------------------------------------------------------------------------


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


@pytest.fixture
def bad_folder(tmp_path) -> tuple[Path, Path]:
    src = tmp_path / "bad"
    src.mkdir()
    real = (IMAGENET / imagenet_files()[0]).read_bytes()
    rgb = Image.new("RGB", (300, 200), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": must NOT be applied
    files = {
        "cmyk.JPEG": _jpeg(Image.new("CMYK", (300, 200), (0, 255, 255, 0))),
        "gray.JPEG": _jpeg(Image.new("L", (300, 200), 77)),
        "png_named.JPEG": (lambda b: (rgb.save(b, "PNG"), b.getvalue())[1])(io.BytesIO()),
        "exif.JPEG": _jpeg(rgb, exif=exif),
        "noexif.JPEG": _jpeg(rgb),
        "truncated.JPEG": real[: len(real) // 2],
        "empty.JPEG": b"",
        "text.JPEG": b"this is not an image\n",
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
    os.symlink(tmp_path / "nowhere.JPEG", src / "dangling.JPEG")  # unreadable
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "filename,label\n"
        + "".join(f"{n},{'a' if i % 2 else 'b'}\n" for i, n in enumerate([*files, "dangling.JPEG"]))
    )
    return src, labels


def test_bad_inputs_are_rejected_with_reasons_and_the_rest_written(bad_folder, tmp_path):
    src, labels = bad_folder
    out = tmp_path / "out"
    proc = alexprep("shard", src, out, "--labels", labels, "--quiet")
    assert "found 9, written 5, rejected 4" in proc.stdout
    rejects = {r["source"]: r["reason"] for r in pq.read_table(out / "train/rejects.parquet").to_pylist()}
    assert set(rejects) == {"truncated.JPEG", "empty.JPEG", "text.JPEG", "dangling.JPEG"}
    assert "truncated" in rejects["truncated.JPEG"]
    assert rejects["empty.JPEG"] == "empty file"
    assert "not a decodable image" in rejects["text.JPEG"]
    assert "unreadable" in rejects["dangling.JPEG"]
    rows = {r["source"]: r for r in manifest(out)}
    # EXIF orientation ignored: original size as stored, pixels as without the tag
    assert (rows["exif.JPEG"]["width"], rows["exif.JPEG"]["height"]) == (300, 200)
    assert rows["exif.JPEG"]["sha256"] == rows["noexif.JPEG"]["sha256"]
    assert alexprep("verify", out, "--quiet").returncode == 0


def test_cmyk_gray_png_decode_to_rgb(bad_folder):
    src, _ = bad_folder
    cmyk = cv2.imdecode(np.frombuffer(process((src / "cmyk.JPEG").read_bytes(), 64).jpeg, np.uint8), 1)
    b, g, r = cmyk.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red
    gray = cv2.imdecode(np.frombuffer(process((src / "gray.JPEG").read_bytes(), 64).jpeg, np.uint8), 1)
    assert gray.shape == (64, 64, 3) and abs(float(gray.mean()) - 77) < 2
    png = process((src / "png_named.JPEG").read_bytes(), 64)
    assert (png.width, png.height) == (300, 200)
    with pytest.raises(RejectedImage):
        process(b"")


def test_strict_fails_on_first_reject(bad_folder, tmp_path):
    src, labels = bad_folder
    proc = alexprep("shard", src, tmp_path / "out", "--labels", labels, "--strict", "--quiet", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("alexprep: error:") and "(--strict)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "out" / "train").glob("*.tar"))


# ---- determinism, resume, nodes -----------------------------------------------------------------


@pytest.mark.slow  # over ~20 s on 2 cores
def test_deterministic_across_worker_counts(imagenet_shards, imagenet_labels, tmp_path):
    out = tmp_path / "one-worker"
    alexprep(
        "shard", IMAGENET, out, "--labels", imagenet_labels, "--shard-size", 256, "--workers", 1, "--quiet"
    )
    assert tree_bytes(out) == tree_bytes(imagenet_shards)


@pytest.mark.slow  # over ~20 s on 2 cores
def test_kill_and_resume_gives_the_same_bytes(imagenet_shards, imagenet_labels, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "preprocess.cli",
        "shard",
        str(IMAGENET),
        str(out),
        "--labels",
        str(imagenet_labels),
        "--shard-size",
        "256",
        "--workers",
        "2",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out / "train" / "parts"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 1:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("*.parquet")))
    assert 1 <= done < 4, "the kill should land mid-run"
    assert not json.loads((out / "dataset.json").read_text())["complete"]
    # nothing half-written is visible under a final name
    for tar in (out / "train").glob("*.tar"):
        assert tar.read_bytes() == (imagenet_shards / "train" / tar.name).read_bytes()
    proc = alexprep(
        "shard", IMAGENET, out, "--labels", imagenet_labels, "--shard-size", 256, "--workers", 2, "--quiet"
    )
    assert f"already complete: {done}" in proc.stdout
    assert tree_bytes(out) == tree_bytes(imagenet_shards)  # the killed run's temporary files are gone too


@pytest.mark.slow  # over ~20 s on 2 cores
def test_node_split_union_is_the_single_node_dataset(imagenet_shards, imagenet_labels, tmp_path):
    args = ["--labels", imagenet_labels, "--shard-size", 256, "--workers", 1, "--quiet"]
    for rank in (0, 1):
        proc = alexprep(
            "shard", IMAGENET, tmp_path / f"node{rank}", *args, "--num-nodes", 2, "--node-rank", rank
        )
        assert "this node's shards are done" in proc.stdout
    n0, n1 = tree_bytes(tmp_path / "node0"), tree_bytes(tmp_path / "node1")
    shards0 = {k for k in n0 if k.endswith(".tar")}
    shards1 = {k for k in n1 if k.endswith(".tar")}
    assert shards0 == {"train/train-000000.tar", "train/train-000002.tar"}
    assert shards0.isdisjoint(shards1)
    union = tmp_path / "union"
    shutil.copytree(tmp_path / "node0", union)
    shutil.copytree(tmp_path / "node1", union, dirs_exist_ok=True)
    proc = alexprep("shard", IMAGENET, union, *args)  # finds all shards done, merges
    assert "shards written now: 0, already complete: 4" in proc.stdout
    assert tree_bytes(union) == tree_bytes(imagenet_shards)


# ---- verify and user errors ---------------------------------------------------------------------


def test_verify_names_the_corrupted_shard_and_sample(imagenet_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(imagenet_shards, out)
    tar = out / "train" / "train-000002.tar"
    sample = read_index(tar.with_suffix(".idx"))[10]
    jpg = next(m for m in sample if m.ext == "jpg")
    data = bytearray(tar.read_bytes())
    data[jpg.offset + jpg.size // 2] ^= 0x01
    tar.write_bytes(bytes(data))
    proc = alexprep("verify", out, "--quiet", check=False)
    assert proc.returncode == 1
    assert f"train-000002.tar: {jpg.name.split('.')[0]}: checksum mismatch" in proc.stdout
    assert proc.stdout.count("\n") == 1  # exactly that sample, nothing else


def test_user_errors_are_one_line(imagenet_shards, imagenet_labels, tmp_path):
    cases = [
        (["shard", tmp_path / "missing", tmp_path / "o"], "not a folder"),
        (
            ["shard", IMAGENET, imagenet_shards, "--labels", imagenet_labels, "--size", 128],
            "holds a different dataset",
        ),
        (
            [
                "shard",
                IMAGENET,
                tmp_path / "o2",
                "--labels",
                imagenet_labels,
                "--num-nodes",
                2,
                "--node-rank",
                2,
            ],
            "--node-rank 2",
        ),
        (["verify", tmp_path / "nothing"], "nothing: no such folder"),
    ]
    for args, message in cases:
        proc = alexprep(*args, check=False)
        assert proc.returncode == 2, proc
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
