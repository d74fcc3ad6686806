"""ILSVRC-2012 trees a hostile tester made (a third pass over `alexprep shard`'s sources): a
`lost+found` or stray folder in train/, a --devkit that had no effect, val labels that train/
lacks, and a LOC_val_solution.csv with suffixed or contradicting ImageIds. Each is refused up
front in one line naming the file and the reason, or read as the user meant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import alexprep
from tests.faults_common import jpeg

WNIDS = ("n01440764", "n01443537")


def ilsvrc(src: Path, solution: bool = True) -> list[str]:
    """SRC/train/<wnid>/ (two images each), a flat SRC/val/ of three ILSVRC2012_val_%08d.JPEG and,
    with `solution`, SRC/LOC_val_solution.csv; returns the CSV's lines (header first)."""
    for k, w in enumerate(WNIDS):
        (src / "train" / w).mkdir(parents=True)
        for i in range(2):
            (src / "train" / w / f"{w}_{i}.JPEG").write_bytes(jpeg((80 * k + 10, 40 * i + 5, 90)))
    (src / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i in range(1, 4):
        vid = f"ILSVRC2012_val_{i:08d}"
        (src / "val" / f"{vid}.JPEG").write_bytes(jpeg((60 * i, 9, 9)))
        rows.append(f"{vid},{WNIDS[i % 2]} 1 2 30 30")
    if solution:
        write_solution(src, rows)
    return rows


def write_solution(src: Path, rows: list[str]) -> None:
    (src / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")


def shard(src: Path, out: Path, *args: object, check: bool = True):  # noqa: ANN201
    return alexprep("shard", src, out, "--size", 16, "--workers", 1, "--quiet", *args, check=check)


def refused(proc, *needles: str) -> None:  # noqa: ANN001
    """One line, exit 2, naming each needle; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def class_names(out: Path) -> list[str]:
    return [c["name"] for c in json.loads((out / "classes.json").read_text())]


# ---- 1. lost+found, and folders that are not wnids in train/ ------------------------------------


@pytest.mark.parametrize("where", ["ilsvrc: train/", "imagefolder: SRC/", "imagefolder: SRC/train/"])
def test_lost_found_is_never_a_class_and_is_said(tmp_path, where):
    src = tmp_path / "src"
    if where.startswith("ilsvrc"):
        ilsvrc(src)
        lost = src / "train" / "lost+found"
    else:
        parent = src / "train" if where.endswith("train/") else src
        for cls in ("cat", "dog"):
            (parent / cls).mkdir(parents=True)
            (parent / cls / "a.jpg").write_bytes(jpeg((9, 90 if cls == "cat" else 200, 9)))
        lost = parent / "lost+found"
    lost.mkdir()
    (lost / "#1234.jpg").write_bytes(jpeg((1, 2, 3)))  # what fsck recovered, an image by chance
    out = tmp_path / "out"
    proc = shard(src, out)
    layout = proc.stdout.splitlines()[0]
    rel = lost.relative_to(src)
    assert f"{rel}/ passed over: a file system's recovery folder, never a class (1 image" in layout, layout
    assert "lost+found" not in class_names(out)
    if where.startswith("ilsvrc"):  # before: read as an ImageFolder tree, the flat val/ skipped
        assert layout.startswith("layout: ilsvrc (val: flat, labels from LOC_val_solution.csv"), layout
        assert "val: found 3, written 3, rejected 0" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "meant, why",
    [
        ("flat val/", "(val/ is flat)"),
        ("LOC_val_solution.csv", "(val/ is flat, LOC_val_solution.csv present)"),
        ("--devkit", "(val/ is flat, --devkit given)"),
        ("devkit folder", "(val/ is flat, ILSVRC2012_devkit_t12/ present)"),
    ],
)
def test_a_folder_that_is_no_wnid_in_an_ilsvrc_train_is_refused_up_front(tmp_path, meant, why):
    src = tmp_path / "src"
    ilsvrc(src, solution=meant == "LOC_val_solution.csv")
    (src / "train" / "extras").mkdir()
    (src / "train" / "extras" / "x.JPEG").write_bytes(jpeg((5, 5, 5)))
    if meant == "devkit folder":
        (src / "ILSVRC2012_devkit_t12").mkdir()
    args = ["--devkit", tmp_path] if meant == "--devkit" else []
    proc = shard(src, tmp_path / "out", *args, check=False)
    refused(
        proc, f"{src / 'train'}: 1 folder(s) that are not wnids (extras/)", why, "move them out of train/"
    )
    assert not (tmp_path / "out").exists()  # before any work


@pytest.mark.parametrize("where", ["train", "val"])
def test_a_folder_without_images_beside_the_wnids_is_passed_over_not_refused(tmp_path, where):
    # val/tmp/ before: val/ taken for a foldered one, its 3 flat images skipped, exit 0
    src = tmp_path / "src"
    ilsvrc(src)
    (src / where / "tmp").mkdir()
    (src / where / "tmp" / "notes.txt").write_text("scratch")
    out = tmp_path / "out"
    proc = shard(src, out)
    assert proc.stdout.startswith("layout: ilsvrc (val: flat, labels from LOC_val_solution.csv"), proc.stdout
    assert "val: found 3, written 3, rejected 0" in proc.stdout and class_names(out) == list(WNIDS)


def test_many_folders_that_are_no_wnids_are_named_first_few_and_counted(tmp_path):
    src = tmp_path / "src"
    ilsvrc(src)
    for name in ("a", "b", "c", "d", "e"):
        (src / "train" / name).mkdir()
        (src / "train" / name / "x.JPEG").write_bytes(jpeg((5, 5, 5)))
    proc = shard(src, tmp_path / "out", check=False)
    refused(
        proc, "5 folder(s) that are not wnids (a/, b/, c/ and 2 more)", "(val/ is flat, LOC_val_solution.csv"
    )


@pytest.mark.parametrize("leftover", [False, True])
def test_wnids_among_an_imagefolder_trees_classes_are_still_an_imagefolder(tmp_path, leftover):
    # val/ in class folders: nothing of it would be skipped, so not refused, even beside a
    # leftover LOC_val_solution.csv (`extras` is a class the user has)
    src = tmp_path / "src"
    for split in ("train", "val"):
        for cls in ("n01440764", "extras"):
            (src / split / cls).mkdir(parents=True)
            (src / split / cls / "a.jpg").write_bytes(jpeg((9, 90 if cls == "extras" else 200, 9)))
    if leftover:
        write_solution(src, ["ImageId,PredictionString", "ILSVRC2012_val_00000001,n01440764 1 2 3 4"])
    proc = shard(src, tmp_path / "out")
    assert proc.stdout.startswith("layout: imagefolder"), proc.stdout
    assert class_names(tmp_path / "out") == ["extras", "n01440764"]


# ---- 2. a --devkit that would be overridden or do nothing --------------------------------------


@pytest.mark.parametrize(
    "tree, said",
    [
        ("solution", "LOC_val_solution.csv labels the flat val/ and would win over the devkit"),
        ("val folders", "is in <wnid>/ folders, which label it; the devkit would have no effect"),
        ("imagefolder", "is not an ILSVRC-2012 tree (train/<wnid>/ with a flat val/)"),
    ],
)
def test_a_devkit_that_would_be_overridden_or_unused_is_refused(tmp_path, tree, said):
    src = tmp_path / "src"
    if tree == "imagefolder":
        for cls in ("cat", "dog"):
            (src / cls).mkdir(parents=True)
            (src / cls / "a.jpg").write_bytes(jpeg((9, 90 if cls == "cat" else 200, 9)))
    else:
        ilsvrc(src, solution=tree == "solution")
    if tree == "val folders":
        for f in sorted((src / "val").iterdir()):
            (src / "val" / WNIDS[0]).mkdir(exist_ok=True)
            f.rename(src / "val" / WNIDS[0] / f.name)
    devkit = tmp_path / "ILSVRC2012_devkit_t12"
    devkit.mkdir()
    proc = shard(src, tmp_path / "out", "--devkit", devkit, check=False)
    refused(proc, f"--devkit {devkit}: ", said)
    assert not (tmp_path / "out").exists()


# ---- 3. val labels that train/ lacks, ImageIds with their suffix --------------------------------


def test_a_val_label_that_train_lacks_is_named_with_its_line(tmp_path):
    src = tmp_path / "src"
    rows = ilsvrc(src)
    rows[3] = "ILSVRC2012_val_00000003,n09999999 1 2 30 30"
    write_solution(src, rows)
    proc = shard(src, tmp_path / "out", check=False)
    refused(
        proc,
        "val/ILSVRC2012_val_00000003.JPEG: label n09999999 (LOC_val_solution.csv line 4) "
        "is not a class of train/",
    )


def test_image_ids_written_with_their_suffix_name_their_images(tmp_path):
    src = tmp_path / "src"
    rows = ilsvrc(src)
    write_solution(src, [rows[0]] + [r.replace(",", ".JPEG,", 1) for r in rows[1:]])
    proc = shard(src, tmp_path / "out")
    assert "val: found 3, written 3, rejected 0" in proc.stdout, proc.stdout


def test_a_val_image_without_a_row_is_said_with_what_an_image_id_is(tmp_path):
    src = tmp_path / "src"
    rows = ilsvrc(src)
    write_solution(src, [rows[0]] + [r.replace("ILSVRC2012_val_", "val_", 1) for r in rows[1:]])
    proc = shard(src, tmp_path / "out", check=False)
    refused(
        proc,
        "val/ILSVRC2012_val_00000001.JPEG: no row in",
        "for 3 val image(s) (an ImageId is the file's name without its suffix, e.g. "
        "ILSVRC2012_val_00000001; its first row has 'val_00000001')",
    )


# ---- 4. one ImageId on two rows --------------------------------------------------------------


@pytest.mark.parametrize("same", [True, False])
def test_one_image_id_with_two_labels_is_refused_naming_both_lines(tmp_path, same):
    src = tmp_path / "src"
    rows = ilsvrc(src)  # line 2: ILSVRC2012_val_00000001 is WNIDS[1]
    other = WNIDS[1] if same else WNIDS[0]
    write_solution(src, [*rows, f"ILSVRC2012_val_00000001.JPEG,{other} 5 5 20 20"])
    proc = shard(src, tmp_path / "out", check=False)
    if same:  # the same label twice: one row said twice, not a contradiction
        assert proc.returncode == 0 and "val: found 3, written 3" in proc.stdout, proc.stderr
        return
    refused(
        proc,
        f"LOC_val_solution.csv:5: ImageId ILSVRC2012_val_00000001 is labelled {WNIDS[0]} here "
        f"and {WNIDS[1]} on line 2",
    )
