"""Find the labelled images under a source folder, whatever layout it came in.

Layouts, tried in this order:

- `ilsvrc`: ILSVRC-2012 as distributed (also inside Kaggle's `ILSVRC/Data/CLS-LOC/`):
  `train/<wnid>/*.JPEG`; `val/` either in `<wnid>/` folders, or flat with labels from
  `LOC_val_solution.csv` or the devkit (preprocess/ilsvrc.py).
- `imagefolder`: `SRC/<split>/<class>/*` or `SRC/<class>/*` (one split, `train`).
- `flat`: a flat folder plus `--labels FILE.csv` (`filename,label`), or `--label-from-name`
  for files named the ImageNet way, `<wnid>_<anything>.JPEG`.

Classes are sorted by name and numbered 0..N-1, the torchvision convention, so a model trained
here agrees with every torchvision ImageNet checkpoint on what class 0 is.

Names are kept as the file system gives them (bytes that are not UTF-8 are carried with Python's
`surrogateescape`, so the file can be opened); wherever a name is written out (manifest,
rejects, sample JSON, classes.json) such bytes appear as `\\xHH` (`clean_name`). Labels CSVs are
read the same way, so a Latin-1 CSV still names its Latin-1 files. OUT is never walked, even
when it lies inside SRC. A `lost+found` folder is never a class, in any layout.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from preprocess.ilsvrc import (  # noqa: F401 (_devkit_val_labels: re-exported for tests)
    _devkit_val_labels,
    check_val_classes,
    devkit_problem,
    flat_val_labels,
    ilsvrc_root,
    val_is_flat,
)
from preprocess.walk import (  # noqa: F401 (SourceError, Source, clean_name: re-exported)
    IMAGE_SUFFIXES,
    SPLIT_NAMES,
    WNID,
    ClassInfo,
    Source,
    SourceError,
    _csv_numbered,
    _excluded,
    _images_in,
    _images_under,
    _read_text,
    _skip_tree,
    _skipped,
    _subdirs,
    check_split_name,
    clean_name,
    lost_found_notes,
    note_outside,
    note_outside_splits,
    outside_notes,
    reset,
)


def read_synset_names(path: Path) -> dict[str, str]:
    """`LOC_synset_mapping.txt` lines: `n01440764 tench, Tinca tinca` -> {wnid: name}."""
    names = {}
    for n, line in enumerate(_read_text(path, "synsets file").splitlines(), start=1):
        wnid, _, name = line.strip().partition(" ")
        if wnid and not name.strip():
            raise SourceError(f"{path}:{n}: expected `<wnid> <name>`, got {clean_name(line)[:60]!r}")
        if wnid:
            names[clean_name(wnid)] = clean_name(name.strip())
    return names


def _make_classes(names: list[str], human: dict[str, str], what: str = "class names") -> list[ClassInfo]:
    """Classes from raw names, sorted; `ClassInfo.name` is the clean name (look up with it)."""
    _check_distinct(names, what)
    clean = sorted({clean_name(n) for n in names})
    return [ClassInfo(i, n, n if WNID.match(n) else None, human.get(n)) for i, n in enumerate(clean)]


def _check_distinct(names: list[str], what: str) -> None:
    """Two raw names that `clean_name` writes alike (the byte 0xFF and the text `\\xff`) would
    silently become one class holding both folders' images: refused, naming both by their bytes."""
    seen: dict[str, str] = {}
    for raw in sorted(set(names)):
        other = seen.setdefault(clean_name(raw), raw)
        if other != raw:
            a, b = (n.encode("utf-8", "surrogateescape") for n in (other, raw))
            raise SourceError(
                f"{what} {a!r} and {b!r} would both be the class `{clean_name(raw)}` (a byte that is "
                "not UTF-8 is written as \\xHH); rename one of them"
            )


def _folder_split(root: Path, split_dir: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    note_outside(split_dir, "not inside a class folder")  # `train/x.jpg`: no class to give it
    items = []
    for cls in _subdirs(split_dir):
        if clean_name(cls) not in index:
            if not _images_under(split_dir / cls):  # SRC/docs/ beside SRC/<class>/: not a class
                _skip_tree(split_dir / cls)  # its files are said as not read
                continue
            raise SourceError(  # ILSVRC: a val class that train/ does not have
                f"{clean_name(str(split_dir / cls))}: class folder not present in the class list"
            )
        for name in _images_under(split_dir / cls):
            items.append((str((split_dir / cls / name).relative_to(root)), index[clean_name(cls)]))
    return items


def _ilsvrc(src: Path, root: Path, devkit: Path | None) -> Source:
    human = {}
    for folder in (src, root):
        if (folder / "LOC_synset_mapping.txt").is_file():
            human = read_synset_names(folder / "LOC_synset_mapping.txt")
    wnids = [d for d in _subdirs(root / "train") if WNID.match(d)]  # others hold no image (ilsvrc_root)
    classes = _make_classes(wnids, human)
    index = {c.name: c.index for c in classes}
    source = Source(root, "ilsvrc", classes)
    source.splits["train"] = _folder_split(root, root / "train", index)
    val = root / "val"
    if val.is_dir() and not val_is_flat(val) and _subdirs(val):
        source.splits["val"] = _folder_split(root, val, index)
        source.notes.append("val: in <wnid>/ folders")
    elif val.is_dir():
        files = _images_in(val)
        labels, note = flat_val_labels(src, root, files, devkit)
        check_val_classes(val, files, labels, set(index))
        source.notes.append(note)
        pairs = zip(files, labels, strict=True)
        source.splits["val"] = [(f"val/{n}", index[clean_name(w)]) for n, (w, _) in pairs]
    if (root / "test").is_dir():
        source.notes.append("test: skipped (ILSVRC test images carry no labels)")
    return source


def _imagefolder(src: Path, human: dict[str, str], split: str | None) -> Source | None:
    top = _subdirs(src)
    split_dirs = [d for d in top if d.lower() in SPLIT_NAMES and _subdirs(src / d)]
    if split_dirs and split is not None:
        raise SourceError(f"--split {split}: {src} names its own splits ({', '.join(split_dirs)})")
    if split_dirs:
        names = [c for d in split_dirs for c in _subdirs(src / d)]
        classes = _make_classes(names, human, f"{src}: class folders")
        index = {c.name: c.index for c in classes}
        source = Source(src, "imagefolder", classes)
        for d in split_dirs:
            source.splits[d] = _folder_split(src, src / d, index)
        note_outside_splits(src, top, split_dirs)
        return source
    class_dirs = [d for d in top if _images_under(src / d)]
    if class_dirs:
        classes = _make_classes(class_dirs, human, f"{src}: class folders")
        source = Source(src, "imagefolder", classes)
        split = split or "train"
        source.splits[split] = _folder_split(src, src, {c.name: c.index for c in classes})
        source.notes.append(f"one split, named {split}")
        return source
    return None


def _read_labels_csv(labels_csv: Path, src: Path) -> list[tuple[str, str]]:
    """`filename,label` rows. The header is optional: a first row `filename,label` is skipped."""
    rows = [(n, r) for n, r in _csv_numbered(labels_csv, "labels file") if r and not r[0].startswith("#")]
    header = bool(rows) and [c.strip().lower() for c in rows[0][1][:2]] == ["filename", "label"]
    rows = rows[1:] if header else rows
    if not rows:
        raise SourceError(f"{labels_csv}: no `filename,label` rows")
    # A third non-empty cell is most often a name holding an unquoted comma: refused, not guessed.
    for n, r in rows:
        if len(r) < 2 or any(c.strip() for c in r[2:]):
            raise SourceError(
                f"{labels_csv}:{n}: expected a `filename,label` row (quote a name that holds a comma), "
                f"got {len(r)} field(s): {clean_name(repr(r))[:80]}"
            )
    n, first = rows[0]
    if not header and _is_other_header(src, first[0].strip()):  # `file,class`: a class `class`
        raise SourceError(
            f"{labels_csv}:{n}: first row {clean_name(','.join(first))[:80]!r} names no file in SRC "
            "(a header row must be exactly `filename,label`; a file name needs its suffix)"
        )
    return [(_csv_name(src, r[0]), r[1].strip()) for _, r in rows]


def _csv_name(src: Path, cell: str) -> str:
    """A row's file as a path inside SRC. Spaces around it are the CSV's (`a.jpg, cat`) unless a
    file has them; an absolute path inside SRC (as given, or through SRC's real path: a list made
    with `find $PWD/...`) is taken relative to SRC. Anything else is left for `_row_problem`."""
    name = cell if cell == cell.strip() or os.path.lexists(src / cell) else cell.strip()
    if not os.path.isabs(name) or "\x00" in name or ".." in PurePosixPath(name).parts:
        return name  # `..` after a link is not the folder above it: refused, as in a relative row
    for root in dict.fromkeys((os.path.abspath(src), os.path.realpath(src))):
        rel = os.path.relpath(name, root)
        if rel != os.curdir and rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel
    return name


def _is_other_header(src: Path, name: str) -> bool:
    """A first row naming no image (no image suffix) and no file in SRC: a header, not a row."""
    if _row_problem(name) is not None or Path(name).suffix.lower() in IMAGE_SUFFIXES:
        return False
    return not os.path.lexists(src / name)


def _row_problem(name: str) -> str | None:
    """Why a CSV row cannot name a file inside SRC (None: it can)."""
    if not name:
        return "empty file name in the labels CSV"
    if "\x00" in name or os.path.isabs(name) or ".." in PurePosixPath(name).parts:
        # this wording is part of the plan's hash (plan_sha256): changed, it would refuse OUTs made before
        return "outside SRC: a labels CSV row must be a relative path inside SRC (no `..`, not absolute)"
    return None


def _labels_from_names(src: Path, human: dict[str, str]) -> tuple[list[tuple[str, str]], dict[int, str]]:
    """ImageNet's own naming, `<wnid>_<anything>.JPEG`: the label is the part before `_`.

    Where the rest is a name rather than a number (`n01440764_tench.JPEG`), it becomes the
    class's human-readable name unless a synsets file gave one. A name that gives no label is
    an input rejected with that reason ({row: reason}), as an unreadable file is: the other
    files are still sharded.
    """
    rows, bad = [], {}
    for name in _images_in(src):
        label, sep, rest = Path(name).stem.partition("_")
        if not sep or not label:
            where = "nothing before the `_`" if sep else "no `_` in the name"
            bad[len(rows)] = f"{where} to take a label from"
            label = ""
        elif rest and not rest.isdigit():
            human.setdefault(clean_name(label), clean_name(rest.replace("_", " ")))
        rows.append((name, label))
    if not rows:
        raise SourceError(f"{src}: no image files")
    if len(bad) == len(rows):  # not one class: nothing a dataset could be made of
        raise SourceError(
            f"{clean_name(str(src / rows[0][0]))}: {bad[0]}; no file in {src} is named `<label>_<rest>`"
        )
    return rows, bad


def _flat(
    src: Path,
    rows: list[tuple[str, str]],
    human: dict[str, str],
    split: str,
    how: str,
    unlabelled: dict[int, str] | None = None,
) -> Source:
    """Rows -> one split. Each row is an input: one that is outside SRC, has no label (with
    `unlabelled`'s reason, where given) or repeats an earlier row's file is rejected with that
    reason (and counted), never read."""
    reasons: dict[int, str] = {}
    first_row: dict[str, int] = {}
    for n, (name, label) in enumerate(rows):
        no_label = (unlabelled or {}).get(n, "empty label in the labels CSV")
        problem = _row_problem(name) or (None if label else no_label)
        if problem is None:
            norm = os.path.normpath(name)
            if norm in first_row:
                problem = f"duplicate: row {first_row[norm] + 1} names the same file"
            else:
                first_row[norm] = n
        if problem:
            reasons[n] = problem
    labels = [label for n, (_, label) in enumerate(rows) if n not in reasons]
    classes = _make_classes(labels, human, f"{src}: labels from {how}")
    index = {c.name: c.index for c in classes}
    order = sorted(range(len(rows)), key=lambda n: (rows[n][0], n))
    items = [(rows[n][0], index.get(clean_name(rows[n][1]), -1)) for n in order]
    source = Source(src, "flat", classes, {split: items})
    source.reasons[split] = {pos: reasons[n] for pos, n in enumerate(order) if n in reasons}
    source.notes.append(f"labels from {how}")
    dups = sum(r.startswith("duplicate") for r in reasons.values())
    if dups:
        source.notes.append(f"{dups} duplicate row(s) rejected")
    outside = sum(r.startswith("outside") for r in reasons.values())
    if outside:
        source.notes.append(f"{outside} row(s) outside SRC rejected")
    if unlabelled:
        source.notes.append(f"{len(unlabelled)} file(s) whose name gives no label rejected")
    # every row inside SRC is listed, rejected or not: a rejected row's file is said once, as rejected
    unlisted = _unlisted(src, {os.path.normpath(name) for name, _ in rows if _row_problem(name) is None})
    if unlisted:
        source.notes.append(
            f"{len(unlisted)} image file(s) in SRC not in the labels (not sharded), "
            f"e.g. {clean_name(unlisted[0])}"
        )
    return source


def _unlisted(src: Path, listed: set[str]) -> list[str]:
    """Image files under SRC (OUT and hidden folders excluded) that no CSV row names."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(folder, d)) not in _excluded
        )
        rel = os.path.relpath(folder, src)
        for f in sorted(files):
            if f.startswith(".") or Path(f).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            name = f if rel == "." else os.path.join(rel, f)
            if name not in listed:
                found.append(name)
    return found


def discover(
    src: Path,
    labels_csv: Path | None = None,
    synsets: Path | None = None,
    devkit: Path | None = None,
    split: str | None = None,
    label_from_name: bool = False,
    exclude: Path | None = None,
) -> Source:
    """Detect the layout of SRC and list its labelled images (never walking into `exclude`).

    `split` names the one split of a flat folder or of SRC/<class>/ (None: train); a layout
    that names its own splits refuses it rather than silently ignoring it."""
    if not src.is_dir():
        raise SourceError(f"{src}: not a folder")
    if split is not None:
        check_split_name(split)
    reset()
    if exclude is not None:
        _excluded.add(os.path.realpath(exclude))
    try:
        source = _discover(src, labels_csv, synsets, devkit, split, label_from_name)
        if _skipped and labels_csv is None:
            example = clean_name(os.path.relpath(min(_skipped), src))
            source.notes.append(
                f"{len(_skipped)} file(s) not read: hidden or not an image suffix (e.g. {example}; "
                f"inputs end in {', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        source.notes += outside_notes(src) + lost_found_notes(src)
        return source
    finally:
        reset()


def _discover(
    src: Path,
    labels_csv: Path | None,
    synsets: Path | None,
    devkit: Path | None,
    split: str | None,
    label_from_name: bool,
) -> Source:
    given = [
        o
        for o, v in (("--labels", labels_csv), ("--label-from-name", label_from_name), ("--devkit", devkit))
        if v
    ]
    if len(given) > 1:  # each names the labels another way; one would be silently ignored
        raise SourceError(f"{' and '.join(given)}: give one way of labelling SRC, not several")
    human = read_synset_names(synsets) if synsets else {}
    if labels_csv is not None:
        return _flat(src, _read_labels_csv(labels_csv, src), human, split or "train", labels_csv.name)
    if label_from_name:
        rows, unlabelled = _labels_from_names(src, human)
        return _flat(src, rows, human, split or "train", "file names", unlabelled)
    root = ilsvrc_root(src, devkit)
    problem = devkit_problem(src, root) if devkit is not None else None
    if problem:  # a flag silently overridden, or of no effect, leaves the user believing it was used
        raise SourceError(f"--devkit {devkit}: {problem}")
    if root is not None and split is not None:
        raise SourceError(f"--split {split}: {src} is an ILSVRC tree that names its own splits")
    if root is not None:
        source = _ilsvrc(src, root, devkit)
        if synsets:
            source.classes = _make_classes([c.name for c in source.classes], human)
        return source
    source = _imagefolder(src, human, split)
    if source is None:
        raise SourceError(
            f"{src}: no images found in a known layout (train/<wnid>/, <split>/<class>/, "
            "<class>/, or a flat folder with --labels FILE.csv)"
        )
    return source
