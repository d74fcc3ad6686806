"""ILSVRC-2012 as distributed: where its root is, whether a --devkit has a use, and the labels
of a flat val/.

A flat val/ is labelled by Kaggle's `LOC_val_solution.csv` (in SRC or the root) or by the
devkit's `ILSVRC2012_validation_ground_truth.txt`, whose ids are the devkit's ILSVRC2012_ID,
*not* sorted-wnid order (`meta.mat` maps them). SRC is read as ILSVRC-2012 when its train/ holds
only <wnid>/ folders. Where SRC is plainly ILSVRC-2012 (a flat val/, a solution file, a devkit)
but train/ also holds other folders, that is refused up front: read as an ImageFolder tree
instead, the flat val/ would be skipped and each such folder become a class, found out only
after hours of sharding.
"""

from __future__ import annotations

import os
from pathlib import Path

from preprocess.walk import (
    IMAGE_SUFFIXES,
    LOST_FOUND,
    WNID,
    SourceError,
    _csv_numbered,
    _images_under,
    _read_text,
    _subdirs,
    clean_name,
)

SOLUTION = "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"
Label = tuple[str, str]  # (wnid, where it was read, e.g. "LOC_val_solution.csv line 4")


def ilsvrc_root(src: Path, devkit: Path | None) -> Path | None:
    """The folder holding train/<wnid>/ (SRC, or Kaggle's SRC/ILSVRC/Data/CLS-LOC), or None."""
    for root in (src, src / "ILSVRC" / "Data" / "CLS-LOC"):
        if not (root / "train").is_dir():
            continue
        dirs = _subdirs(root / "train")
        # a folder without images (train/tmp/) is no class in either layout: skipped, and said
        wnids = [d for d in dirs if WNID.match(d)]
        others = [d for d in dirs if not WNID.match(d) and _images_under(root / "train" / d)]
        if wnids and not others:
            return root
        why = _meant_as_ilsvrc(src, root, devkit) if wnids else None
        if why:
            raise SourceError(_stray_folders(root / "train", others, why))
    return None


def _meant_as_ilsvrc(src: Path, root: Path, devkit: Path | None) -> str | None:
    """Why SRC is plainly ILSVRC-2012 though train/ holds folders that are not wnids: its val/ is
    flat, which an ImageFolder tree's is not (and would be skipped as an ImageFolder's), with what
    else says so. None: an ImageFolder tree whose class names happen to include wnids, read as one
    (a stray --devkit then meets devkit_problem's refusal)."""
    if not val_is_flat(root / "val"):
        return None
    solution = solution_file(src, root)
    also = [
        *(["--devkit given"] if devkit is not None else []),
        *([f"{solution.name} present"] if solution is not None else []),
        *([f"{DEVKIT}/ present"] if (src / DEVKIT).is_dir() else []),
    ]
    return ", ".join(["val/ is flat", *also])


def val_is_flat(val: Path) -> bool:
    """val/ holds image files and no folder of images: ILSVRC's flat val/ (an ImageFolder's has
    class folders). The one test of it: a stray image-less folder (val/tmp/) must not turn a flat
    val/ into a foldered one whose every image is then skipped."""
    try:
        with os.scandir(val) as it:
            entries = [(e.name, e.is_dir()) for e in it]
    except OSError:
        return False
    folders = any(
        d and not n.startswith(".") and n != LOST_FOUND and _images_under(val / n) for n, d in entries
    )
    return not folders and any(not d and Path(n).suffix.lower() in IMAGE_SUFFIXES for n, d in entries)


def _stray_folders(train: Path, others: list[str], why: str) -> str:
    """The refusal of folders that are not wnids in an ILSVRC train/: the first few, and how many."""
    shown = ", ".join(f"{clean_name(d)}/" for d in others[:3]) + (
        f" and {len(others) - 3} more" if len(others) > 3 else ""
    )
    return (
        f"{clean_name(str(train))}: {len(others)} folder(s) that are not wnids ({shown}) beside the "
        f"<wnid>/ class folders; SRC is ILSVRC-2012 ({why}), whose train/ holds only <wnid>/ folders "
        "(e.g. n01440764): move them out of train/, then re-run"
    )


def solution_file(src: Path, root: Path) -> Path | None:
    """Kaggle's LOC_val_solution.csv, in SRC or beside train/ (None: there is none)."""
    return next((f / SOLUTION for f in (src, root) if (f / SOLUTION).is_file()), None)


def devkit_problem(src: Path, root: Path | None) -> str | None:
    """Why an explicit --devkit would be overridden or have no effect (None: it labels val/).
    A flag that is silently ignored leaves the user believing it was used."""
    if root is None:
        return (
            f"{src} is not an ILSVRC-2012 tree (train/<wnid>/ with a flat val/), the only layout "
            "the devkit labels; drop --devkit"
        )
    val = root / "val"
    if not val.is_dir():
        return f"{root} has no val/ for the devkit to label; drop --devkit"
    if not val_is_flat(val) and _subdirs(val):
        return f"{val} is in <wnid>/ folders, which label it; the devkit would have no effect: drop --devkit"
    solution = solution_file(src, root)
    if solution is not None:
        return (
            f"{solution} labels the flat val/ and would win over the devkit: give one way of "
            f"labelling SRC (drop --devkit, or move {SOLUTION} out of {solution.parent})"
        )
    return None


def flat_val_labels(src: Path, root: Path, files: list[str], devkit: Path | None) -> tuple[list[Label], str]:
    """Each flat val/ image's label and where it was read, and the summary's note of whence."""
    val = root / "val"
    solution = solution_file(src, root)
    if devkit is None and (src / DEVKIT).is_dir():
        devkit = src / DEVKIT
    if solution is not None:
        rows = _read_loc_solution(solution)
        missing = [n for n in files if Path(n).stem not in rows]
        if missing:
            first, stem = clean_name(next(iter(rows), "")), clean_name(Path(missing[0]).stem)
            raise SourceError(
                f"{clean_name(str(val / missing[0]))}: no row in {solution} for {len(missing)} val "
                f"image(s) (an ImageId is the file's name without its suffix, e.g. {stem}; "
                f"its first row has {first!r})"
            )
        return [rows[Path(n).stem] for n in files], f"val: flat, labels from {SOLUTION}"
    if devkit is not None:
        wnids = _devkit_val_labels(devkit)
        if len(wnids) != len(files):
            raise SourceError(f"{devkit}: {len(wnids)} labels for {len(files)} val images")
        where = "the devkit's ground truth, entry"
        return [(w, f"{where} {i}") for i, w in enumerate(wnids, 1)], (
            "val: flat, labels from the devkit (ILSVRC2012_ID -> wnid)"
        )
    raise SourceError(f"{val}: flat val/ but no labels: put {SOLUTION} in {src} or pass --devkit {DEVKIT}")


def check_val_classes(val: Path, files: list[str], labels: list[Label], classes: set[str]) -> None:
    """Every flat val/ label is a class of train/: the first that is not is named, with the line
    it was read from (a "no label" would send the user looking for a missing row)."""
    alien = [(n, lab) for n, lab in zip(files, labels, strict=True) if clean_name(lab[0]) not in classes]
    if alien:
        name, (wnid, where) = alien[0]
        more = f"; {len(alien)} val images have a label train/ lacks" if len(alien) > 1 else ""
        raise SourceError(
            f"{clean_name(str(val / name))}: label {clean_name(wnid)} ({where}) "
            f"is not a class of train/{more}"
        )


def _read_loc_solution(path: Path) -> dict[str, Label]:
    """Kaggle's `LOC_val_solution.csv`: ImageId -> (first wnid of PredictionString, its line).

    An ImageId written with its file's suffix (`ILSVRC2012_val_00000001.JPEG`) names the same
    image. One ImageId on two rows with different labels is refused, naming both lines (which
    is right cannot be known; the last one silently won before); identical rows are one."""
    rows = _csv_numbered(path, SOLUTION)
    head = [c.strip() for c in rows[0][1]] if rows else []
    if "ImageId" not in head or "PredictionString" not in head:
        raise SourceError(f"{path}: expected columns ImageId,PredictionString, found {head[:4]}")
    i, p = head.index("ImageId"), head.index("PredictionString")
    labels: dict[str, tuple[str, int]] = {}
    for n, r in rows[1:]:
        if len(r) <= max(i, p) or not r[p].split():
            raise SourceError(f"{path}:{n}: row without a PredictionString: {clean_name(','.join(r))[:80]!r}")
        image_id, wnid = r[i].strip(), r[p].split()[0]
        if Path(image_id).suffix.lower() in IMAGE_SUFFIXES:
            image_id = Path(image_id).stem
        first, line = labels.setdefault(image_id, (wnid, n))
        if first != wnid:
            raise SourceError(
                f"{path}:{n}: ImageId {clean_name(image_id)} is labelled {clean_name(wnid)} here and "
                f"{clean_name(first)} on line {line}; an image has one label: remove the wrong row"
            )
    return {k: (w, f"{path.name} line {n}") for k, (w, n) in labels.items()}


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
    try:
        synsets = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    except Exception as e:  # noqa: BLE001 - scipy raises many kinds on a garbage file
        raise SourceError(
            f"{meta}: not a devkit meta.mat with synsets ({type(e).__name__}: {e})"[:300]
        ) from None
    try:
        ids = [int(x) for x in _read_text(truth, "devkit ground truth").split()]
    except ValueError as e:
        raise SourceError(f"{truth}: expected one integer id per line ({e})") from None
    try:
        return [id_to_wnid[i] for i in ids]
    except KeyError as e:
        raise SourceError(f"{truth}: id {e} not in {meta}") from None
