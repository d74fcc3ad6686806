"""Second hostile pass (issue 9): cases of the same kinds that test_hostile_input.py does not hold.

Each test runs the real CLI in a subprocess on generated inputs with known answers.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import alexprep

SIZE = "16"


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """SRC/<class>/ with one image each, one of them named with a newline."""
    src = tmp_path / "src"
    for cls, name, color in (("cat", "a.jpg", (200, 0, 0)), ("dog", "b\nrejected: forged.jpg", (0, 0, 0))):
        (src / cls).mkdir(parents=True)
        (src / cls / name).write_bytes(jpeg(color) if cls == "cat" else b"")
    return src


def test_split_names_a_one_split_tree_and_is_refused_where_src_names_its_own(class_tree, tmp_path):
    proc = alexprep("shard", class_tree, tmp_path / "out", "--split", "val", "--size", SIZE, "--quiet")
    assert "val: found 2, written 1, rejected 1" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["val"]
    both = tmp_path / "both"
    for split in ("train", "val"):
        (both / split / "cat").mkdir(parents=True)
        (both / split / "cat" / "a.jpg").write_bytes(jpeg((1, 2, 3)))
    proc = alexprep("shard", both, tmp_path / "out2", "--split", "val", check=False)
    assert proc.returncode == 2 and "names its own splits (train, val)" in proc.stderr
    assert not (tmp_path / "out2").exists()


def test_a_newline_in_a_file_name_cannot_forge_summary_lines(class_tree, tmp_path):
    proc = alexprep("shard", class_tree, tmp_path / "out", "--size", SIZE, "--quiet")
    rejected = [line for line in proc.stdout.splitlines() if line.startswith("rejected:")]
    assert rejected == ["rejected: dog/b\\nrejected: forged.jpg: empty file"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no `filename,label` rows"),
        ("filename,label\n", "no `filename,label` rows"),
        ("a,b.jpg,cat\n", "quote a name that holds a comma"),
    ],
)
def test_labels_csv_that_is_empty_or_has_a_third_column_is_refused(tmp_path, text, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a,b.jpg").write_bytes(jpeg((5, 5, 5)))
    (src / "a").write_bytes(jpeg((9, 9, 9)))
    labels = tmp_path / "l.csv"
    labels.write_text(text)
    proc = alexprep("shard", src, tmp_path / "out", "--labels", labels, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_trailing_empty_cell_is_still_a_row(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg((5, 5, 5)))
    labels = tmp_path / "l.csv"
    labels.write_text("a.jpg,cat,\r\n")
    alexprep("shard", src, tmp_path / "out", "--labels", labels, "--size", SIZE, "--quiet")
    assert [c["name"] for c in json.loads((tmp_path / "out" / "classes.json").read_text())] == ["cat"]
