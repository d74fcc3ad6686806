"""Find the labelled images under a source folder, whatever layout it came in.

Layouts, tried in this order:

- `ilsvrc`: ILSVRC-2012 as distributed (also inside Kaggle's `ILSVRC/Data/CLS-LOC/`):
  `train/<wnid>/*.JPEG`; `val/` either in `<wnid>/` folders, or flat with labels from
  `LOC_val_solution.csv`, or from the devkit's `ILSVRC2012_validation_ground_truth.txt`
  (whose ids are the devkit's ILSVRC2012_ID, *not* sorted-wnid order; `meta.mat` maps them).
- `imagefolder`: `SRC/<split>/<class>/*` or `SRC/<class>/*` (one split, `train`).
- `flat`: a flat folder plus `--labels FILE.csv` (`filename,label`), or `--label-from-name`
  for files named the ImageNet way, `<wnid>_<anything>.JPEG`.

Classes are sorted by name and numbered 0..N-1, the torchvision convention, so a model trained
here agrees with every torchvision ImageNet checkpoint on what class 0 is.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "validation", "valid", "test")
WNID = re.compile(r"^n\d{8}$")


class SourceError(Exception):
    """SRC is not a layout we can read; the message says what was expected."""


@dataclass(frozen=True)
class ClassInfo:
    index: int
    name: str
    wnid: str | None
    label: str | None  # human-readable, where known


@dataclass
class Source:
    root: Path
    layout: str
    classes: list[ClassInfo]
    # split -> [(path relative to root, class index)], in source (sorted) order
    splits: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _images_in(folder: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    )


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def read_synset_names(path: Path) -> dict[str, str]:
    """`LOC_synset_mapping.txt` lines: `n01440764 tench, Tinca tinca` -> {wnid: name}."""
    names = {}
    for line in path.read_text().splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            names[wnid] = name.strip()
    return names


def _make_classes(names: list[str], human: dict[str, str]) -> list[ClassInfo]:
    return [
        ClassInfo(i, n, n if WNID.match(n) else None, human.get(n)) for i, n in enumerate(sorted(set(names)))
    ]


def _folder_split(root: Path, split_dir: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    items = []
    for cls in _subdirs(split_dir):
        if cls not in index:
            raise SourceError(f"{split_dir / cls}: class folder not present in the class list")
        for name in _images_in(split_dir / cls):
            items.append((str((split_dir / cls / name).relative_to(root)), index[cls]))
    return items


def _ilsvrc_root(src: Path) -> Path | None:
    for root in (src, src / "ILSVRC" / "Data" / "CLS-LOC"):
        train = root / "train"
        if train.is_dir():
            dirs = _subdirs(train)
            if dirs and all(WNID.match(d) for d in dirs):
                return root
    return None


def _devkit_val_labels(devkit: Path) -> list[str]:
    """Devkit ground truth (one ILSVRC2012_ID per val image, in file-name order) -> wnids."""
    try:
        import scipy.io
    except ImportError:
        raise SourceError("the devkit's meta.mat needs scipy: pip install 'alexnet2012[devkit]'") from None

    meta = devkit / "data" / "meta.mat"
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    for p in (meta, truth):
        if not p.is_file():
            raise SourceError(f"{p}: devkit file missing")
    synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    ids = [int(x) for x in truth.read_text().split()]
    try:
        return [id_to_wnid[i] for i in ids]
    except KeyError as e:
        raise SourceError(f"{truth}: id {e} not in {meta}") from None


def _ilsvrc(src: Path, root: Path, devkit: Path | None) -> Source:
    human = {}
    for folder in (src, root):
        if (folder / "LOC_synset_mapping.txt").is_file():
            human = read_synset_names(folder / "LOC_synset_mapping.txt")
    wnids = _subdirs(root / "train")
    classes = _make_classes(wnids, human)
    index = {c.name: c.index for c in classes}
    source = Source(root, "ilsvrc", classes)
    source.splits["train"] = _folder_split(root, root / "train", index)
    val = root / "val"
    if val.is_dir() and _subdirs(val):
        source.splits["val"] = _folder_split(root, val, index)
        source.notes.append("val: in <wnid>/ folders")
    elif val.is_dir():
        files = _images_in(val)
        solution = next(
            (f / "LOC_val_solution.csv" for f in (src, root) if (f / "LOC_val_solution.csv").is_file()), None
        )
        if devkit is None and (src / "ILSVRC2012_devkit_t12").is_dir():
            devkit = src / "ILSVRC2012_devkit_t12"
        if solution is not None:
            with open(solution, newline="") as f:
                rows = {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}
            labels = [rows.get(Path(n).stem) for n in files]
            source.notes.append(f"val: flat, labels from {solution.name}")
        elif devkit is not None:
            labels = _devkit_val_labels(devkit)
            if len(labels) != len(files):
                raise SourceError(f"{devkit}: {len(labels)} labels for {len(files)} val images")
            source.notes.append("val: flat, labels from the devkit (ILSVRC2012_ID -> wnid)")
        else:
            raise SourceError(
                f"{val}: flat val/ but no labels: put LOC_val_solution.csv in {src} "
                "or pass --devkit ILSVRC2012_devkit_t12"
            )
        missing = [n for n, lab in zip(files, labels, strict=True) if lab not in index]
        if missing:
            raise SourceError(f"{val / missing[0]}: no label for {len(missing)} val image(s)")
        source.splits["val"] = [(f"val/{n}", index[lab]) for n, lab in zip(files, labels, strict=True)]
    if (root / "test").is_dir():
        source.notes.append("test: skipped (ILSVRC test images carry no labels)")
    return source


def _imagefolder(src: Path, human: dict[str, str]) -> Source | None:
    top = _subdirs(src)
    split_dirs = [d for d in top if d.lower() in SPLIT_NAMES and _subdirs(src / d)]
    if split_dirs:
        names = [c for d in split_dirs for c in _subdirs(src / d)]
        classes = _make_classes(names, human)
        index = {c.name: c.index for c in classes}
        source = Source(src, "imagefolder", classes)
        for d in split_dirs:
            source.splits[d] = _folder_split(src, src / d, index)
        return source
    class_dirs = [d for d in top if _images_in(src / d)]
    if class_dirs:
        classes = _make_classes(class_dirs, human)
        source = Source(src, "imagefolder", classes)
        source.splits["train"] = _folder_split(src, src, {c.name: c.index for c in classes})
        source.notes.append("one split, named train")
        return source
    return None


def _read_labels_csv(labels_csv: Path) -> list[tuple[str, str]]:
    if not labels_csv.is_file():
        raise SourceError(f"{labels_csv}: labels file not found")
    with open(labels_csv, newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["filename", "label"]:
        rows = rows[1:]
    bad = next((r for r in rows if len(r) < 2), None)
    if bad is not None:
        raise SourceError(f"{labels_csv}: expected `filename,label` rows, got {bad}")
    return [(r[0].strip(), r[1].strip()) for r in rows]


def _labels_from_names(src: Path, human: dict[str, str]) -> list[tuple[str, str]]:
    """ImageNet's own naming, `<wnid>_<anything>.JPEG`: the label is the part before `_`.

    Where the rest is a name rather than a number (`n01440764_tench.JPEG`), it becomes the
    class's human-readable name unless a synsets file gave one.
    """
    rows = []
    for name in _images_in(src):
        label, _, rest = Path(name).stem.partition("_")
        if not rest:
            raise SourceError(f"{src / name}: no `_` in the name to take a label from")
        if not rest.isdigit():
            human.setdefault(label, rest.replace("_", " "))
        rows.append((name, label))
    if not rows:
        raise SourceError(f"{src}: no image files")
    return rows


def _flat(src: Path, rows: list[tuple[str, str]], human: dict[str, str], split: str, how: str) -> Source:
    classes = _make_classes([label for _, label in rows], human)
    index = {c.name: c.index for c in classes}
    items = sorted((name, index[label]) for name, label in rows)
    missing = [name for name, _ in items if not (src / name).exists()]
    source = Source(src, "flat", classes, {split: items})
    source.notes.append(f"labels from {how}")
    if missing:
        # Listed but absent: still "found" (the CSV says they exist); rejected with a reason.
        source.notes.append(f"{len(missing)} file(s) listed in the labels but missing")
    return source


def discover(
    src: Path,
    labels_csv: Path | None = None,
    synsets: Path | None = None,
    devkit: Path | None = None,
    split: str = "train",
    label_from_name: bool = False,
) -> Source:
    """Detect the layout of SRC and list its labelled images."""
    if not src.is_dir():
        raise SourceError(f"{src}: not a folder")
    human = read_synset_names(synsets) if synsets else {}
    if labels_csv is not None:
        return _flat(src, _read_labels_csv(labels_csv), human, split, labels_csv.name)
    if label_from_name:
        return _flat(src, _labels_from_names(src, human), human, split, "file names")
    root = _ilsvrc_root(src)
    if root is not None:
        source = _ilsvrc(src, root, devkit)
        if synsets:
            source.classes = _make_classes([c.name for c in source.classes], human)
        return source
    source = _imagefolder(src, human)
    if source is None:
        raise SourceError(
            f"{src}: no images found in a known layout (train/<wnid>/, <split>/<class>/, "
            "<class>/, or a flat folder with --labels FILE.csv)"
        )
    return source
