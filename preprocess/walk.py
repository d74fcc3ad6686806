"""Walking a source folder: which files are inputs, which are counted as not read, and the
types `discover` returns (preprocess/sources.py decides the layout; this module reads folders).

Names are kept as the file system gives them (bytes that are not UTF-8 are carried with Python's
`surrogateescape`, so the file can be opened); wherever a name is written out such bytes appear
as `\\xHH` (`clean_name`). OUT is never walked, even when it lies inside SRC (`excluded`).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "validation", "valid", "test")
WNID = re.compile(r"^n\d{8}$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TEXT_BYTES = 256 * 2**20  # a labels CSV / synsets file larger than this is not one
LOST_FOUND = "lost+found"  # fsck's folder at every ext2/3/4 file system's root: never a class

_excluded: set[str] = set()  # real paths never walked (OUT, when it lies inside SRC)
_skipped: set[str] = set()  # files seen in image folders that are not inputs (said in the summary)
_outside: dict[str, tuple[int, str]] = {}  # why -> (count, first name): image files with no place
_lost: set[str] = set()  # lost+found folders passed over (said in the summary)
_loops: set[str] = set()  # folder links to folders read elsewhere or above: not followed (said)


def reset() -> None:
    """Forget what an earlier walk excluded, skipped and passed over (one `discover` at a time)."""
    for seen in (_excluded, _skipped, _outside, _lost, _loops):
        seen.clear()


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
    # split -> {position in splits[split]: reason}: inputs rejected before reading (a CSV row
    # outside SRC, a duplicate row); they count as found and rejected like any other
    reasons: dict[str, dict[int, str]] = field(default_factory=dict)


def clean_name(name: str) -> str:
    """`name` as valid UTF-8 text: undecodable bytes (surrogateescape'd) become `\\xHH`; any
    other lone surrogate (a `\\ud800` escape in a JSON label, never a file name) `\\uHHHH`."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        lone = "".join(
            f"\\u{ord(c):04x}" if 0xD800 <= ord(c) < 0xDC80 or 0xDD00 <= ord(c) < 0xE000 else c for c in name
        )
        return clean_name(lone)


def printable(text: str) -> str:
    """`text` on one line: a control character in a file name (a newline) is shown escaped, so
    that a hostile name cannot forge lines of a summary or a table."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in clean_name(text))


def check_split_name(split: str) -> str:
    """A split is a plain folder name inside OUT (no `/`, no `..`, not absolute)."""
    if not SPLIT_NAME.match(split) or split in (".", ".."):
        raise SourceError(
            f"--split {split!r}: a split is a plain name (letters, digits, `_`, `-`, `.`; e.g. train, val)"
        )
    return split


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        raise SourceError(f"{folder}: cannot list folder ({e.strerror})") from None
    if not _excluded:
        return entries
    return [e for e in entries if not _is_dir(e) or os.path.realpath(e.path) not in _excluded]


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False


def _read_text(path: Path, what: str) -> str:
    """A small UTF-8 text file (BOM allowed; undecodable bytes kept, see clean_name)."""
    try:
        if not path.is_file():
            raise SourceError(f"{path}: {what} is not a regular file")
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise SourceError(f"{path}: {what} is over {MAX_TEXT_BYTES:,} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise SourceError(f"{path}: cannot read {what} ({e.strerror})") from None
    if b"\x00" in data:
        raise SourceError(f"{path}: {what} is binary (contains NUL bytes), not text")
    return data.decode("utf-8-sig", "surrogateescape")


def _images_in(folder: Path) -> list[str]:
    """Every non-folder entry with an image suffix: links, FIFOs and devices included, so that
    each is counted as found and then rejected with its reason. Other files (hidden, or another
    suffix) are not inputs; they are counted in `_skipped` and the summary says so."""
    names = []
    for e in _scandir(folder):
        if _is_dir(e):
            continue
        if not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
            names.append(e.name)
        else:
            _skipped.add(os.path.join(folder, e.name))
    return sorted(names)


def _images_under(folder: Path, seen: set[str] | None = None, root: str = "") -> list[str]:
    """`_images_in` of a class folder and of every folder below it (`cat/sub/x.jpg`, as
    torchvision's ImageFolder reads), as paths relative to `folder`. Folder links are followed
    (a link farm is a normal SRC), but every real folder is entered once per class: a link to
    the class folder or a folder above it (a loop), into the class's own tree, or to a folder
    already entered is not followed, and is said (`_loops`). Hidden folders are not entered; the
    files in them are counted as not read (`_skipped`)."""
    seen = set() if seen is None else seen
    root = root or os.path.realpath(folder)  # the class folder's
    seen.add(os.path.realpath(folder))
    found = [name for name in _images_in(folder)]
    for e in sorted(_scandir(folder), key=lambda e: e.name):
        if not _is_dir(e):
            continue
        if e.name.startswith("."):
            _skip_tree(Path(e.path))
        elif e.is_symlink() and _read_elsewhere(os.path.realpath(e.path), seen, root):
            _loops.add(e.path)
        else:
            found += [f"{e.name}/{name}" for name in _images_under(Path(e.path), seen, root)]
    return sorted(found)


def _read_elsewhere(target: str, seen: set[str], root: str) -> bool:
    """A linked folder whose images this class reads at another place (or never should): one
    in the class's own tree, one entered already, or one that holds a folder entered (SRC, `/`,
    the class folder itself)."""
    return target.startswith(root + os.sep) or any(
        target == s or s.startswith(target.rstrip(os.sep) + os.sep) for s in seen
    )


def _skip_tree(folder: Path) -> None:
    """Count every file under a folder that is not read (a hidden or linked folder) in `_skipped`,
    so the summary's "not read" line says that it was passed over."""
    if folder.is_symlink():
        _skipped.add(str(folder))
        return
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(base, d)) not in _excluded]
        _skipped.update(os.path.join(base, f) for f in files)


def note_outside(folder: Path, why: str, below: bool = False) -> None:
    """Count the image files in `folder` (with `below`, also in the folders under it, links not
    followed) that the layout has no place for: `SRC/x.jpg` beside the class folders,
    `SRC/extra/` beside `train/` and `val/`. They have no class, so they are not inputs;
    `_outside` keeps a count and the first name per reason so that the summary says they were
    not read, rather than dropping them unmentioned."""
    if folder.is_symlink():  # as `_images_under`: a linked folder is not walked, but said
        _skipped.add(str(folder))
        return
    for base, dirs, files in os.walk(folder):
        dirs[:] = [
            d
            for d in dirs
            if below and not d.startswith(".") and os.path.realpath(os.path.join(base, d)) not in _excluded
        ]
        for f in files:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                count, first = _outside.get(why, (0, None))
                path = os.path.join(base, f)
                _outside[why] = (count + 1, path if first is None else min(first, path))


def note_outside_splits(src: Path, top: list[str], split_dirs: list[str]) -> None:
    """Image files of a SRC/<split>/<class>/ tree that are in no split: `SRC/x.jpg`, and what a
    folder beside the splits holds (`SRC/extra/`, or a split-named folder without class folders)."""
    elsewhere = f"not under {' or '.join(f'{d}/' for d in split_dirs)}"
    note_outside(src, elsewhere)
    for d in top:
        if d not in split_dirs:
            flat_split = d.lower() in SPLIT_NAMES  # `test/` holding images but no class folder
            note_outside(src / d, "not inside a class folder" if flat_split else elsewhere, below=True)


def outside_notes(src: Path) -> list[str]:
    """The summary's lines for `_outside` (per reason, how many and one example) and `_loops`."""
    notes = [
        f"{count} image file(s) not read: {why} (e.g. {clean_name(os.path.relpath(first, src))})"
        for why, (count, first) in sorted(_outside.items())
    ]
    if _loops:
        notes.append(
            f"{len(_loops)} folder link(s) not followed: each leads to a folder above it or one "
            f"its class reads already, whose images are read once (e.g. "
            f"{clean_name(os.path.relpath(min(_loops), src))})"
        )
    return notes


def lost_found_notes(src: Path) -> list[str]:
    """The summary's lines for the lost+found folders passed over: each one, and how many image
    files in it were not read (fsck's finds, often root's alone: an unreadable one counts 0)."""
    notes = []
    for folder in sorted(_lost):
        images = sum(
            Path(f).suffix.lower() in IMAGE_SUFFIXES for _, _, files in os.walk(folder) for f in files
        )
        rel = clean_name(os.path.relpath(folder, src))
        notes.append(
            f"{rel}/ passed over: a file system's recovery folder, never a class "
            f"({images} image file(s) in it not read)"
        )
    return notes


def _subdirs(folder: Path) -> list[str]:
    """Class (or split) folders: hidden ones are not classes (`.git`, `.ipynb_checkpoints`), what
    they hold is counted as not read; nor is `lost+found` (on a disk mounted as SRC or train/ it
    would become a class, or turn ILSVRC's train/<wnid>/ into another layout), which is said."""
    names = []
    for e in _scandir(folder):
        if not _is_dir(e):
            continue
        if e.name.startswith("."):
            _skip_tree(Path(e.path))
        elif e.name == LOST_FOUND:
            _lost.add(e.path)
        else:
            names.append(e.name)
    return sorted(names)


def _csv_numbered(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, row) pairs, so that an error can name the line of the row at fault."""
    reader = csv.reader(io.StringIO(_read_text(path, what), newline=""))  # a quoted name may hold a newline
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise SourceError(f"{path}: not a CSV file ({e})") from None
