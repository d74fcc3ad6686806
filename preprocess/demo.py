"""A small labelled image set that a net can learn in a minute: the demo's data, made here.

A newcomer may have no ImageNet and no images at hand; `alextrain demo` still has to run the
whole chain (shard, verify, pca-stats, run, eval, figures, report) on real JPEG files. So this
module draws them: ten classes of shapes and gratings, each image with its own random colours,
position, scale, line width and canvas size (landscape, portrait and square, 40 to 160 pixels),
written as JPEGs in an ImageFolder tree (`ROOT/train/<class>/*.jpg`, `ROOT/val/<class>/*.jpg`),
the layout `alexprep shard` reads for any image collection. Colour says nothing about the
class, so the net has to learn shape and orientation: what conv1's kernels are for.

Only numpy and OpenCV: no torch, so `alexprep` could host it too. The set is a pure function
of (counts, seed): the same arguments give the same files, byte for byte.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from shards import layout

# The content a class is recognised by lies in the central square of the canvas (the square that
# `alexprep shard` keeps: shorter side resized, centre crop); the rest is background.
MIN_SIDE, MAX_SIDE = 40, 160
MARKER = "demo-images.json"  # written last: the tree is complete and made with these arguments

Painter = Callable[[np.ndarray, np.random.Generator, tuple[int, int], int, tuple], None]


def _shape_box(rng: np.random.Generator, centre: tuple[int, int], side: int) -> tuple[int, int, int]:
    """(cx, cy, radius): a random position and scale inside the central square."""
    r = int(side * rng.uniform(0.24, 0.38))
    slack = side // 2 - r - 1
    cx = centre[0] + int(rng.integers(-slack, slack + 1)) if slack > 0 else centre[0]
    cy = centre[1] + int(rng.integers(-slack, slack + 1)) if slack > 0 else centre[1]
    return cx, cy, r


def _circle(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    cx, cy, r = _shape_box(rng, centre, side)
    cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)


def _ring(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    cx, cy, r = _shape_box(rng, centre, side)
    cv2.circle(img, (cx, cy), r, colour, max(2, r // 3), cv2.LINE_AA)


def _square(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    cx, cy, r = _shape_box(rng, centre, side)
    box = cv2.boxPoints(((cx, cy), (1.6 * r, 1.6 * r), float(rng.uniform(-15, 15))))
    cv2.fillPoly(img, [np.round(box).astype(np.int32)], colour, cv2.LINE_AA)


def _triangle(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    cx, cy, r = _shape_box(rng, centre, side)
    angles = np.deg2rad([-90, 30, 150]) + np.deg2rad(rng.uniform(-10, 10))
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], colour, cv2.LINE_AA)


def _cross(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    cx, cy, r = _shape_box(rng, centre, side)
    w = max(2, r // 2)
    cv2.line(img, (cx - r, cy), (cx + r, cy), colour, w, cv2.LINE_AA)
    cv2.line(img, (cx, cy - r), (cx, cy + r), colour, w, cv2.LINE_AA)


def _grating(angle_deg: float, jitter: float) -> Painter:
    """Stripes at an angle (4 to 7 periods across the central square), random phase."""

    def paint(img, rng, centre, side, colour) -> None:  # noqa: ANN001
        h, w = img.shape[:2]
        period = side / rng.uniform(4, 7)
        theta = np.deg2rad(angle_deg + rng.uniform(-jitter, jitter))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (x * np.cos(theta) + y * np.sin(theta)) / period + rng.uniform(0, 1)
        mask = (phase % 1.0) < rng.uniform(0.35, 0.6)
        img[mask] = colour

    return paint


def _checker(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    h, w = img.shape[:2]
    cell = side / rng.uniform(4, 7)
    y, x = np.mgrid[0:h, 0:w]
    ox, oy = rng.uniform(0, cell, 2)
    mask = ((np.floor((x + ox) / cell) + np.floor((y + oy) / cell)) % 2).astype(bool)
    img[mask] = colour


def _dots(img, rng, centre, side, colour) -> None:  # noqa: ANN001
    h, w = img.shape[:2]
    step = side / rng.uniform(4, 6)
    r = max(1, int(step * rng.uniform(0.18, 0.3)))
    ox, oy = rng.uniform(0, step, 2)
    for y in np.arange(oy, h, step):
        for x in np.arange(ox, w, step):
            cv2.circle(img, (int(x), int(y)), r, colour, -1, cv2.LINE_AA)


# Ten classes; a mirror image (training's random reflection) stays in its class.
CLASSES: dict[str, Painter] = {
    "circle": _circle,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "horizontal-stripes": _grating(90, 8),
    "vertical-stripes": _grating(0, 8),
    "diagonal-stripes": lambda img, rng, *a: _grating(45 if rng.random() < 0.5 else 135, 8)(img, rng, *a),
    "checkerboard": _checker,
    "dots": _dots,
}


def _colours(rng: np.random.Generator) -> tuple[tuple, tuple]:
    """Background and foreground colours (BGR) far enough apart in brightness to see the shape."""
    while True:
        bg, fg = rng.integers(0, 256, (2, 3))
        if abs(int(fg.sum()) - int(bg.sum())) >= 150:
            return tuple(map(int, bg)), tuple(map(int, fg))


def draw(name: str, rng: np.random.Generator) -> np.ndarray:
    """One image of class `name` (BGR uint8) on a canvas of random size and aspect."""
    w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, 2))
    side = min(w, h)
    bg, fg = _colours(rng)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    CLASSES[name](img, rng, (w // 2, h // 2), side, fg)
    noise = rng.normal(0, rng.uniform(2, 10), img.shape)  # sensor-like noise: no two alike
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def make_images(root: Path, train_per_class: int = 160, val_per_class: int = 40, seed: int = 0) -> dict:
    """Write the demo image set under `root` (an ImageFolder tree with train/ and val/).

    Reused as it is when `root` already holds a complete set made with the same arguments (its
    marker file, written last, says so); otherwise made in a temporary folder and renamed into
    place, so an interrupted run never leaves a partial set that looks complete. Returns the
    marker's content: the arguments, classes and image counts.
    """
    params = {"train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    marker = root / MARKER
    if marker.is_file():
        try:
            made = layout.read_json(marker)
        except layout.LayoutError:
            made = {}
        if made.get("params") == params:
            return made
    if root.exists() and any(root.iterdir()):
        raise layout.LayoutError(
            f"{root}: exists and is not a demo image set made with these arguments; remove it or pick another"
        )
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    counts = {}
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for name in CLASSES:
            folder = tmp / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                quality = int(rng.integers(80, 96))
                ok, jpeg = cv2.imencode(".jpg", draw(name, rng), [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:  # OpenCV built without JPEG support: nothing the demo can do
                    raise layout.LayoutError(f"{folder}: OpenCV could not encode a JPEG")
                (folder / f"{name}-{i:04d}.jpg").write_bytes(jpeg.tobytes())
        counts[split] = n * len(CLASSES)
    made = {"params": params, "classes": list(CLASSES), "images": counts}
    (tmp / MARKER).write_text(json.dumps(made, indent=2) + "\n")
    if root.exists():
        root.rmdir()  # empty (checked above)
    tmp.rename(root)
    return made
