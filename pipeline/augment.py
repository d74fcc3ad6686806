"""The paper's on-the-fly augmentation, as numbers: crop, flip, PCA lighting, mean subtraction.

Section 4.1: random 224x224 patches of the 256x256 images and their horizontal reflections;
at test time the 4 corner and the centre patches and their reflections (10 in all); and PCA
lighting, adding [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every RGB pixel with a_i ~ N(0, 0.1)
drawn once per image per presentation.

This module holds those constants and the lighting matrix M, so that shift = M @ alpha. The DALI
pipeline, the reference loader and the tests all take M from here. Lighting conventions:

- `cuda-convnet` (default): Krizhevsky's code: M = V diag(sqrt(lambda)), lambda at the 0-255
  pixel scale, i.e. alpha scales the standard deviation along each principal axis: a shift of a
  few pixel levels.
- `paper`: the formula as printed: M = V diag(lambda), lambda at the 0-255 scale. lambda_1 is
  ~13,000 on ImageNet, so this shifts colours by ~1,300 levels: reachable, not sensible.
- `fbresnet`: fb.resnet.torch's: lambda at the [0, 1] scale, multiplied in linearly, applied to
  [0, 1] pixels; at the 0-255 scale that is M = V diag(lambda / 255).
- `off`: no lighting noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import LIGHTING_CONVENTIONS, NORMALIZATIONS
from preprocess.paper import CROP_SIZE, LIGHTING_STD, TEN_CROP_POS  # noqa: F401 (section 4.1)
from shards import layout
from shards.reader import images_digest


class StatsError(Exception):
    """stats.json or mean_image.npy is missing or does not fit the shards."""


@dataclass(frozen=True)
class Stats:
    mean_rgb: np.ndarray  # (3,)
    std_rgb: np.ndarray  # (3,)
    eigval: np.ndarray  # (3,), descending, 0-255 scale
    eigvec: np.ndarray  # (3, 3), columns
    mean_image: np.ndarray  # (S, S, 3) float32 RGB


def load_stats(out: Path, own: bool = True) -> Stats:
    """OUT's stats.json and mean_image.npy, checked where they are read: shapes, dtypes, finite
    values, and (`own`: training, when OUT has a train split and stats.json records one) the
    plan they were computed from. A NaN here would otherwise train to NaN weights without a
    word. Evaluating a model (`own=False`) takes its training set's statistics wherever they are
    copied to, checked by their hash against its checkpoint (trainer.inference.check_fits)."""
    sj, mi = out / layout.STATS_JSON, out / layout.MEAN_IMAGE
    for p in (sj, mi):
        if not p.is_file():
            raise StatsError(f"{p}: missing; run `alexprep pca-stats {out}` first")
    redo = f"re-run `alexprep pca-stats {out}`"
    shapes = {"mean_rgb": (3,), "std_rgb": (3,), "eigval": (3,), "eigvec": (3, 3)}
    try:
        s = json.loads(sj.read_text())
        v = {k: np.asarray(s[k], np.float64) for k in shapes}
    except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
        raise StatsError(f"{sj}: not readable pca-stats ({e.__class__.__name__}: {e}); {redo}") from None
    bad = [f"{k} {v[k].shape}" for k, want in shapes.items() if v[k].shape != want]
    if bad:
        raise StatsError(f"{sj}: wrong shapes ({', '.join(bad)}); {redo}")
    problem = _stats_problem(v)
    if problem:
        raise StatsError(f"{sj}: {problem}; {redo}")
    meta = _dataset_meta(out)
    if own:
        _check_plan(sj, s, meta, redo)
    size = meta.get("size") if isinstance(meta.get("size"), int) else None
    mean = _load_mean_image(mi, size, redo)
    _check_pair(sj, s, mi, redo)
    return Stats(v["mean_rgb"], v["std_rgb"], v["eigval"], v["eigvec"], mean)


def _stats_problem(v: dict[str, np.ndarray]) -> str | None:
    """What makes these statistics unusable, or None: non-finite values (one NaN makes every
    weight NaN), a zero or negative std (channel normalisation divides by it), a channel mean off
    the 0-255 scale, eigenvectors that are not orthonormal."""
    nonfinite = [k for k, a in v.items() if not np.isfinite(a).all()]
    if nonfinite:
        return f"non-finite values (NaN or inf) in {', '.join(nonfinite)}"
    if (v["std_rgb"] <= 0).any():
        return f"std_rgb {v['std_rgb'].tolist()} has a value <= 0 (channel normalisation divides by it)"
    if ((v["mean_rgb"] < 0) | (v["mean_rgb"] > 255)).any():
        return f"mean_rgb {v['mean_rgb'].tolist()} is not on the 0-255 pixel scale"
    if not np.allclose(v["eigvec"].T @ v["eigvec"], np.eye(3), atol=1e-3):
        return "eigvec is not orthonormal (columns of unit length, at right angles)"
    return None


def estimate_note(out: Path) -> str | None:
    """A line for a run's start when OUT's statistics are `pca-stats --max-images`'s estimate
    rather than the paper's (over the whole training set); None otherwise."""
    try:
        s = json.loads((out / layout.STATS_JSON).read_text())
        record = s["computed_from"]
        if not record.get("estimate"):
            return None
        n, of = int(s["num_images"]), _dataset_meta(out)["splits"]["train"]["written"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # nothing recorded to say (load_stats checks the file itself)
    return (
        f"{out / layout.STATS_JSON}: an estimate from {n:,} of the train split's {of:,} images "
        f"(pca-stats --max-images); `alexprep pca-stats {out}` computes the paper's, over all of them"
    )


def _dataset_meta(out: Path) -> dict:
    try:
        return layout.read_json(out / layout.DATASET_JSON)
    except layout.LayoutError:
        return {}  # the dataset's own loader names a missing dataset.json


def _check_plan(sj: Path, s: dict, meta: dict, redo: str) -> None:
    """Stats computed from another dataset (another shard plan) are refused where this dataset
    has a train split to compute its own from; a dataset without one (an eval-only set) uses the
    training set's statistics, as the paper does. Hand-written stats record no plan. Stats of
    the same plan whose train images have changed since (a shard redone from a changed source
    file: dataset.json's tar hashes) are refused too."""
    record = s.get("computed_from")
    recorded = record.get("dataset_plan_sha256") if isinstance(record, dict) else None
    here = meta.get("plan_sha256")
    has_train = "train" in (meta.get("splits") or {})
    if recorded is None or here is None or not has_train:
        return
    if recorded != here:
        raise StatsError(
            f"{sj}: computed from another dataset (plan {str(recorded)[:12]}, this one is "
            f"{str(here)[:12]}: other images, --seed or --shard-size); {redo}"
        )
    then, now = record.get("train_images_sha256"), images_digest(meta, "train")
    if then is not None and now is not None and then != now:
        raise StatsError(
            f"{sj}: computed from other train images than the shards now hold (a shard rewritten "
            f"since, e.g. by --redo-shard after a source file changed); {redo} (a run started on the "
            "old images cannot --resume on the new ones: start a new run, or --init-from it)"
        )


def _check_pair(sj: Path, s: dict, mi: Path, redo: str) -> None:
    """mean_image.npy is the one this stats.json was written with (its recorded SHA-256): a
    pca-stats that failed between the two files, or a mean image copied from elsewhere, is not."""
    record = s.get("computed_from")
    want = record.get("mean_image_sha256") if isinstance(record, dict) else None
    if want is None:
        return
    try:
        with open(mi, "rb") as f:
            have = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise StatsError(f"{mi}: unreadable ({e.strerror}); {redo}") from None
    if have != want:
        raise StatsError(f"{mi}: not the mean image {sj.name} was computed with; {redo}")


def _load_mean_image(mi: Path, size: int | None, redo: str) -> np.ndarray:
    """The mean image, its header checked before any allocation (a forged shape would ask for
    gigabytes), as float32: a real float dtype, the dataset's size, finite, on the 0-255 scale."""
    try:
        with open(mi, "rb") as f:
            fmt = np.lib.format
            header = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = header(f)
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise StatsError(f"{mi}: not a readable .npy ({e.__class__.__name__}); {redo}") from None
    want = (size, size, 3) if size else None
    if len(shape) != 3 or shape[2] != 3 or (want and tuple(shape) != want):
        expect = f"{size} x {size} x 3" if size else "H x W x 3"
        raise StatsError(f"{mi}: shape {tuple(shape)}, not a {expect} mean image; {redo}")
    if dtype.kind != "f":  # ints wrap, complex has no order, objects would need pickle
        raise StatsError(f"{mi}: dtype {dtype}, not a float mean image; {redo}")
    try:
        mean = np.load(mi)  # no pickles
    except (OSError, ValueError, EOFError) as e:
        raise StatsError(f"{mi}: not a readable .npy ({e.__class__.__name__}); {redo}") from None
    mean = mean.astype(np.float32)
    if not np.isfinite(mean).all():
        raise StatsError(f"{mi}: {int((~np.isfinite(mean)).sum())} non-finite values (NaN or inf); {redo}")
    if mean.min() < 0 or mean.max() > 255:
        raise StatsError(f"{mi}: values outside 0-255 ({mean.min():g} .. {mean.max():g}); {redo}")
    return mean


@dataclass(frozen=True)
class Normalization:
    """What is subtracted (and divided) per pixel: built once from the dataset's statistics and
    used alike by the DALI graphs, the reference loader and single images.

    mean-image (section 2): the per-pixel mean image of the training set; channel: per-channel
    mean and std (torchvision style). Unused parts are None.
    """

    mean_image: np.ndarray | None = None  # (S, S, 3) float32
    channel_mean: np.ndarray | None = None  # (3,)
    channel_std: np.ndarray | None = None  # (3,)

    @classmethod
    def of(cls, stats: Stats, mode: str) -> Normalization:
        if mode == "mean-image":
            return cls(mean_image=stats.mean_image)
        if mode == "channel":
            return cls(channel_mean=stats.mean_rgb, channel_std=stats.std_rgb)
        raise ValueError(f"normalization {mode!r} not in {NORMALIZATIONS}")

    def apply(self, f: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
        """float32 HWC image (+ the lighting shift) -> normalised, as every loader computes it."""
        if self.mean_image is not None:
            f = f - self.mean_image
        if shift is not None:
            f = f + shift.astype(np.float32)
        if self.channel_mean is not None:
            f = (f - self.channel_mean.astype(np.float32)) / self.channel_std.astype(np.float32)
        return f


def lighting_matrix(stats: Stats, convention: str) -> np.ndarray:
    """M (3x3, 0-255 pixel scale) such that the per-image RGB shift is M @ alpha."""
    v, lam = stats.eigvec, np.clip(stats.eigval, 0, None)
    if convention == "cuda-convnet":
        return v * np.sqrt(lam)
    if convention == "paper":
        return v * lam
    if convention == "fbresnet":
        return v * (lam / 255.0)
    if convention == "off":
        return np.zeros((3, 3))
    raise ValueError(f"lighting convention {convention!r} not in {LIGHTING_CONVENTIONS}")


def eval_windows(ten_crop: bool) -> list[tuple[float, float, bool]]:
    """The test-time patches in output order, as (relative x, relative y, mirrored): the centre
    patch alone, or the 10 (each of TEN_CROP_POS, then its reflection). Every eval path (DALI,
    the reference loader, one user image) takes its crops from here."""
    if not ten_crop:
        return [(*TEN_CROP_POS[-1], False)]
    return [(px, py, m) for px, py in TEN_CROP_POS for m in (False, True)]


def crop_origin(pos: float, size: int, crop: int) -> int:
    """Pixel offset of a crop at relative position pos in [0, 1], rounded as DALI rounds."""
    return int(np.floor(pos * (size - crop) + 0.5))


def reference_augment(
    image: np.ndarray,
    norm: Normalization,
    x: int,
    y: int,
    crop: int,
    flip: bool,
    shift: np.ndarray,
    scale: float = 1.0,
) -> np.ndarray:
    """The whole per-image transform in numpy, HWC uint8 RGB -> CHW float32: the oracle.

    (image - mean image) + lighting shift, cropped at (x, y), mirrored: or, with channel
    normalisation, ((image + shift) - mean_rgb) / std_rgb, cropped and mirrored; either times
    `scale` (cuda-convnet's 1 / 1.1 after colour noise, `LoaderConfig.lighting_scale_div`).
    """
    f = norm.apply(image.astype(np.float32), shift)
    f = f[y : y + crop, x : x + crop] * np.float32(scale)
    if flip:
        f = f[:, ::-1]
    return np.ascontiguousarray(f.transpose(2, 0, 1))


def eval_crops(rgb: np.ndarray, norm: Normalization, *, crop: int, ten_crop: bool) -> np.ndarray:
    """The test-time crops of one stored image, [N, C, crop, crop] float32, N = 1 or 10."""
    h, w = rgb.shape[:2]
    zero = np.zeros(3)
    return np.stack(
        [
            reference_augment(
                rgb,
                norm,
                crop_origin(px, w, crop),
                crop_origin(py, h, crop),
                crop,
                m,
                zero,
            )
            for px, py, m in eval_windows(ten_crop)
        ]
    )
