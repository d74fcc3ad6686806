"""The ILSVRC-2012 wnid -> name table shipped with the package, and its use where labels are wnids."""

from __future__ import annotations

import json
import re

from tests.conftest import IMAGENET, imagenet_files
from trainer import imagenet
from trainer.figures import class_names


def test_the_table_is_the_1000_ilsvrc2012_classes_in_class_index_order():
    table = imagenet.synsets()
    assert len(table) == 1000 and all(re.fullmatch(r"n\d{8}", w) for w in table)
    assert list(table) == sorted(table)  # class index = position in sorted wnids (the devkit's order)
    assert table["n01440764"] == "tench, Tinca tinca" and imagenet.name_of("n01440764") == "tench"
    names = imagenet.short_names()
    assert len(set(names.values())) == 1000  # the two cranes and two maillots are told apart
    assert names["n02012849"] == "crane (n02012849)" and names["n03126707"] == "crane (n03126707)"
    assert imagenet.name_of("n99999999") is None and imagenet.name_of("cat") is None
    assert imagenet.is_imagenet_1k(list(reversed(table))) and not imagenet.is_imagenet_1k(list(table)[:999])


def test_the_table_agrees_with_the_real_samples_names():
    """../shared/data's 1,000 `<wnid>_<name>.JPEG`: the same wnids, and each name is the table's
    first name (spaces as underscores)."""
    names = dict(f.removesuffix(".JPEG").split("_", 1) for f in imagenet_files())
    assert IMAGENET.is_dir() and set(names) == set(imagenet.synsets())
    first = {w: n.split(",")[0].replace(" ", "_") for w, n in imagenet.synsets().items()}
    assert names == first


def test_wnid_classes_get_their_names_where_nothing_else_names_them(tmp_path):
    classes = [
        {"index": 0, "name": "n01440764", "wnid": "n01440764", "label": None},  # the table names it
        {"index": 1, "name": "n02088632", "wnid": "n02088632", "label": "my hound"},  # a label wins
        {"index": 2, "name": "n09999999", "wnid": "n09999999", "label": None},  # in no table
        {"index": 3, "name": "cat", "wnid": None, "label": None},  # a folder name is its own name
    ]
    names, missing = class_names(tmp_path, classes)
    assert names == ["tench", "my hound", "n09999999", "cat"] and missing == [2]
    (tmp_path / "class_names.json").write_text(json.dumps({"n01440764": "Tinca tinca"}))
    assert class_names(tmp_path, classes)[0][0] == "Tinca tinca"  # the user's own file first
