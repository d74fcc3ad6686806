"""Figures 3 and 4 and the run report on a real CIFAR-10 checkpoint (Figure 3's layout: test_figure3.py)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tests.conftest import alextrain
from trainer.figures import FigureError
from trainer.neighbors import check_query_memory


def test_kernels_error_without_conv1(tmp_path):
    ck = tmp_path / "other.pt"
    torch.save({"model": {"fc.weight": torch.zeros(3, 3)}}, ck)
    proc = alextrain("kernels", ck, "--out", tmp_path / "x.png", check=False)
    assert proc.returncode == 2 and "no conv1 of shape" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_table_json_png(cifar_run, cifar_ready, cifar_root, tmp_path):
    images = [cifar_root / "test" / c / "0000.jpg" for c in ("cat", "ship", "truck")]
    proc = alextrain(
        "predict",
        cifar_run / "last.pt",
        *images,
        "--data",
        cifar_ready,
        "--out",
        tmp_path / "p.png",
        "--json-out",
        tmp_path / "p.json",
        "--ten-crop",
    )
    result = json.loads((tmp_path / "p.json").read_text())
    assert len(result) == 3 and "ship" in proc.stdout
    for r in result:
        assert {"image", "top", "true_index", "true_name", "true_prob"} <= set(r)
        assert len(r["top"]) == 5 and abs(sum(t["prob"] for t in r["top"]) - 1) < 0.2
        assert r["top"] == sorted(r["top"], key=lambda t: -t["prob"])
    assert Image.open(tmp_path / "p.png").size == (round(2.4 * 3 * 100), 420)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    proc = alextrain("predict", cifar_run / "last.pt", bad, "--data", cifar_ready, check=False)
    assert proc.returncode == 2 and "bad.jpg: not a decodable image" in proc.stderr


def test_neighbors_finds_the_query_itself(cifar_run, cifar_ready, cifar_root, tmp_path):
    import pyarrow.parquet as pq

    manifest = pq.read_table(cifar_ready / "test" / "manifest.parquet", columns=["source"])[
        "source"
    ].to_pylist()
    query = "test/ship/0007.jpg"
    proc = alextrain(
        "neighbors",
        cifar_run / "last.pt",
        "--data",
        cifar_ready,
        "--split",
        "test",
        "--query",
        cifar_root / query,
        "--k",
        4,
        "--include-self",
        "--chunk",
        3000,
        "--out",
        tmp_path / "n.png",
        "--json-out",
        tmp_path / "n.json",
    )
    result = json.loads((tmp_path / "n.json").read_text())[0]
    # itself, at ~0: DALI's float ops vs the numpy path differ in the last bits only
    found, distances = [n["index"] for n in result["neighbors"]], [n["distance"] for n in result["neighbors"]]
    assert found[0] == manifest.index(query), proc.stdout
    assert distances[0] < 0.01 * distances[1], proc.stdout
    assert distances == sorted(distances)
    assert Image.open(tmp_path / "n.png").size == (round(1.5 * 5 * 100), 190)
    assert len(list(cifar_run.glob("features-last-test-*.npy"))) == 1  # cached for the next query


def test_query_set_larger_than_memory_is_refused():
    with pytest.raises(FigureError, match="query fewer images"):
        check_query_memory(10**9, 4096, 65536)


def test_report(cifar_run, tmp_path):
    out = tmp_path / "report.md"
    alextrain("report", cifar_run, "--out", out)
    text = out.read_text()
    assert "paper:" not in text and "this run (epoch 0, numbered from 0" in text  # CIFAR-10: not Table 2's
    assert Image.open(tmp_path / "report.png").size == (1200, 350)
    proc = alextrain("report", tmp_path, check=False)
    assert proc.returncode == 2 and "no metrics.jsonl" in proc.stderr


def test_the_true_class_is_the_class_folder_before_the_file_name():
    """predict took `odd/cat/truck.jpg` for a truck and `cat/dog_park.jpg` for a dog: the file
    name's first word was read before the folder, which is how a class is given."""
    from pathlib import Path

    from trainer.figures import true_class

    classes = [
        {"index": 0, "name": "cat"},
        {"index": 1, "name": "dog"},
        {"index": 2, "name": "truck"},
        {"index": 3, "name": "tench", "wnid": "n01440764"},
    ]
    cases = {
        "odd/cat/truck.jpg": (0, None),
        "odd/cat/dog_park.jpg": (0, None),
        "odd/cat/cat_on_a_mat.jpg": (0, "on a mat"),
        "odd/cat/0001.jpg": (0, None),
        "samples/n01440764_tench.JPEG": (3, "tench"),  # ImageNet's naming, outside a class folder
        "samples/dog_12.jpg": (1, None),
        "samples/photo.jpg": (None, None),
    }
    assert {p: true_class(Path(p), classes) for p in cases} == cases
