"""The paper's figures from a user's own checkpoint: Figure 3 (conv1 kernels), Figure 4 (top-5
predictions; nearest neighbours in the last hidden layer), and a run report with curves.

Images given by the user are preprocessed exactly as the val pipeline sees them: the offline
step (shorter side 256, centre crop, JPEG q90, as `alexprep shard` stores them), then the
centre 224 crop (or the 10 crops) minus the mean image (`pipeline.single.image_input`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from pipeline.augment import load_stats
from pipeline.single import IMAGE_SIZE, LIMITS, UnusableImage, image_input
from shards import layout
from shards.reader import load_classes
from trainer.errors import FigureError
from trainer.evaluate import predict_each
from trainer.metrics import METRICS, read_metrics

# Table 2 of the paper (ILSVRC-2012): top-1 / top-5 error, val where given, else test.
PAPER_TABLE2 = [
    ("1 CNN", 40.7, 18.2),
    ("5 CNNs", 38.1, 16.4),
    ("1 CNN* (pre-trained, 6th conv)", 39.0, 16.6),
    ("7 CNNs*", 36.7, 15.4),
]


def _mpl():
    try:
        import matplotlib
    except ImportError:
        raise FigureError(
            "matplotlib is not installed; pip install 'alexnet2012[figures]' (or matplotlib)"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:  # noqa: ANN001
    """A matplotlib figure to `path` atomically (format from the suffix), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png")
    _mpl().close(fig)
    layout.write_atomic(path, buf.getvalue())


def save_image(img: Image.Image, path: Path) -> None:
    """A PIL image to `path` atomically (format from the suffix)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise FigureError(f"{path}: unknown image type {path.suffix!r} (use .png)")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    layout.write_atomic(path, buf.getvalue())


# ---- Figure 3 -----------------------------------------------------------------------------------


def conv1_kernels(state: dict) -> list[np.ndarray]:
    """conv1 weights per tower, each [N, 3, k, k]; FigureError if there is no such layer."""
    weights = state.get("model")
    if not isinstance(weights, dict):  # a malformed checkpoint: no tensors to show
        weights = {}
    weights = {k: v for k, v in weights.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    towers = [weights[k] for k in sorted(weights) if k.startswith("conv1.parts.") and k.endswith(".weight")]
    if not towers and "body.0.weight" in weights:  # the small CIFAR net
        towers = [weights["body.0.weight"]]
    if not towers or any(w.ndim != 4 or w.shape[1] != 3 or w.shape[2] != w.shape[3] for w in towers):
        shapes = [tuple(w.shape) for w in towers]
        raise FigureError(f"no conv1 of shape [N, 3, k, k] in the checkpoint (found {shapes or 'none'})")
    return [w.float().numpy() for w in towers]


def kernel_grid(towers: list[np.ndarray], cols: int = 8, scale: int = 4, pad: int = 2) -> Image.Image:
    """One row block per tower, each kernel min-max contrast-normalised on its own."""
    k = towers[0].shape[-1]
    cell = k * scale + pad
    rows_per = [-(-len(t) // cols) for t in towers]
    gap = 3 * pad
    height = sum(r * cell for r in rows_per) + gap * (len(towers) - 1) + pad
    canvas = np.full((height, cols * cell + pad, 3), 255, np.uint8)
    y0 = pad
    for t, rows in zip(towers, rows_per, strict=True):
        for i, w in enumerate(t):
            img = w.transpose(1, 2, 0)
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
            img = np.kron((img * 255).astype(np.uint8), np.ones((scale, scale, 1), np.uint8))
            r, c = divmod(i, cols)
            y, x = y0 + r * cell, pad + c * cell
            canvas[y : y + k * scale, x : x + k * scale] = img
        y0 += rows * cell + gap
    return Image.fromarray(canvas)


# ---- preprocessing of a user's image, as the val pipeline does -----------------------------------


def load_image(
    path: Path,
    stats,  # noqa: ANN001
    crop: int,
    ten_crop: bool,
    size: int = IMAGE_SIZE,
    normalization: str = "mean-image",
    limits: tuple[int, int] = LIMITS,
) -> tuple[np.ndarray, torch.Tensor]:
    """(the stored RGB image, the network input): `pipeline.single.image_input`, FigureError if unusable.

    `limits`: (max pixels, max bytes) of the file [default: alexprep shard's]."""
    try:
        return image_input(path, stats, crop, ten_crop, normalization, size, limits)
    except UnusableImage as e:
        raise FigureError(str(e)) from None


CLASS_NAMES_JSON = "class_names.json"  # optional: {wnid or class name: human-readable name}
_WNID = re.compile(r"^n\d{8}$")


def class_names(data: Path, classes: list[dict]) -> tuple[list[str], list[int]]:
    """A human-readable name per class, and the indices of classes that have none.

    Sources, first found: classes.json's `label` (from a synsets file, the devkit, or file names
    like `n01440764_tench.JPEG`), DATA/class_names.json, then the class's own name unless it is
    a bare wnid (a folder called `cat` is its own name; `n02422106` is not).
    """
    extra = {}
    if (data / CLASS_NAMES_JSON).is_file():
        try:
            extra = layout.read_json(data / CLASS_NAMES_JSON)  # an object: name -> text
        except layout.LayoutError as e:
            raise FigureError(str(e)) from None
    names, missing = [], []
    for c in classes:
        key = c.get("wnid") or c.get("name")
        human = c.get("label") or extra.get(key) or extra.get(str(c.get("name")))
        if not human and c.get("name") and not _WNID.match(str(c["name"])):
            human = str(c["name"])
        if not human:
            missing.append(c["index"])
        names.append(str(human or c.get("name") or c["index"]))
    return names, missing


def true_class(path: Path, classes: list[dict]) -> tuple[int | None, str | None]:
    """The class an image's path names, and a human name the file name gives, if any.

    `n01440764_tench.JPEG` (ImageNet's naming) -> the class with that wnid, named "tench";
    `.../cat/0000.jpg` (one folder per class) -> the class `cat`.
    """
    by_key = {}
    for c in classes:
        for key in (c.get("name"), c.get("wnid")):
            if key:
                by_key[str(key)] = c["index"]
    head, _, rest = path.stem.partition("_")
    if head in by_key:
        named = rest.replace("_", " ") if rest and not rest.isdigit() else None
        return by_key[head], named
    return by_key.get(path.parent.name), None


# ---- Figure 4 (left) ----------------------------------------------------------------------------


def predict_images(
    model,  # noqa: ANN001
    data: Path,
    images: list[Path],
    crop: int,
    ten_crop: bool,
    normalization: str,
    k: int = 5,
    limits: tuple[int, int] = LIMITS,
) -> tuple[list[dict], list[int]]:
    """Top-k classes of each image with probabilities and names, and the true class when the
    path names one; also the indices of the shown classes that have no human-readable name."""
    stats, classes = load_stats(data), load_classes(data)
    names, missing = class_names(data, classes)
    size = layout.read_json(data / layout.DATASET_JSON)["size"]
    device = next(model.parameters()).device
    loaded = [
        load_image(p, stats, crop, ten_crop, size, normalization, limits) for p in images
    ]  # all decode first
    for path in images:  # names that the file names give fill the gaps
        truth, named = true_class(path, classes)
        if truth is not None and named and truth in missing:
            names[truth] = named
            missing.remove(truth)
    results, shown = [], set()
    for path, (rgb, x) in zip(images, loaded, strict=True):
        probs = predict_each([model], x.to(device), amp=False)[0][0].cpu()
        top = probs.topk(min(k, len(probs)))
        truth, _ = true_class(path, classes)
        shown.update(int(i) for i in top.indices)
        results.append(
            {
                "image": str(path),
                "top": [
                    {"index": int(i), "name": names[int(i)], "prob": float(p)}
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
                "true_index": truth,
                "true_name": names[truth] if truth is not None else None,
                "true_prob": float(probs[truth]) if truth is not None else None,
                "_rgb": rgb,
            }
        )
    return results, sorted(shown.intersection(missing))


def plot_predictions(results: list[dict], path: Path) -> None:
    """Figure 4 (left): each image, its true class under it, and the top-5 as bars.

    As in the paper, the true label is written under the image and its bar is red when it is
    among the top 5. The bars are scaled to the largest probability shown (a young model's
    0.02 is visible) and each is labelled with its probability.
    """
    plt = _mpl()
    n = len(results)
    fig, axes = plt.subplots(
        2, n, figsize=(2.4 * n, 4.2), dpi=100, squeeze=False, gridspec_kw={"height_ratios": [3, 2]}
    )
    for j, r in enumerate(results):
        axes[0, j].imshow(r["_rgb"])
        axes[0, j].set_axis_off()
        label = (r["true_name"] or Path(r["image"]).name)[:22]  # under the image, as in the paper
        axes[0, j].text(0.5, -0.03, label, transform=axes[0, j].transAxes, ha="center", va="top", fontsize=8)
        names = [t["name"][:18] for t in r["top"]][::-1]
        probs = [t["prob"] for t in r["top"]][::-1]
        colours = ["tab:red" if t["index"] == r["true_index"] else "tab:blue" for t in r["top"]][::-1]
        ax = axes[1, j]
        ax.barh(range(len(probs)), probs, color=colours)
        ax.set_yticks(range(len(probs)), names, fontsize=7)
        ax.set_xlim(0, max(max(probs), 1e-6) * 1.35)
        for y, p in enumerate(probs):
            ax.text(p, y, f" {p:.2f}" if p >= 0.01 else f" {p:.1e}", va="center", fontsize=6)
        ax.set_xticks([])
        if r["true_index"] is not None and r["true_index"] not in [t["index"] for t in r["top"]]:
            ax.set_xlabel(f"true: p={r['true_prob']:.2g}", fontsize=7, color="tab:red")
    fig.tight_layout()
    save_figure(fig, path)


# ---- Figure 4 (right): nearest neighbours in the last hidden layer -------------------------------


def chunked_topk(queries: torch.Tensor, bank_chunks, k: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """k smallest Euclidean distances from each query to a bank given in chunks.

    Memory is O(queries x (chunk + k)), whatever the bank's size (1.28M x 4096 floats is 21 GB).
    `bank_chunks` yields (offset, [n, d] tensor). Returns (distances, indices), ascending.
    """
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    q = queries.float()
    for offset, chunk in bank_chunks:
        d = torch.cdist(q, chunk.float().to(q.device)).cpu()
        idx = torch.arange(offset, offset + len(chunk)).expand(len(q), -1)
        all_d, all_i = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
        keep = all_d.topk(min(k, all_d.shape[1]), dim=1, largest=False)
        best_d, best_i = keep.values, all_i.gather(1, keep.indices)
    return best_d, best_i


def check_query_memory(n_queries: int, dim: int, chunk: int) -> None:
    need = n_queries * (dim + chunk) * 4 * 3  # queries, one distance block, and topk scratch
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return
    if need > avail // 2:
        raise FigureError(
            f"{n_queries} queries need ~{need / 2**30:.1f} GiB for the search, "
            f"{avail / 2**30:.1f} GiB is free: query fewer images at a time"
        )


def plot_neighbors(queries: list[np.ndarray], neighbours: list[list[np.ndarray]], path: Path) -> None:
    plt = _mpl()
    k = len(neighbours[0])
    fig, axes = plt.subplots(
        len(queries), k + 1, figsize=(1.3 * (k + 1), 1.3 * len(queries)), dpi=100, squeeze=False
    )
    for r, (q, ns) in enumerate(zip(queries, neighbours, strict=True)):
        for c, img in enumerate([q, *ns]):
            axes[r, c].imshow(img)
            axes[r, c].set_axis_off()
    axes[0, 0].set_title("query", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def train_images(data: Path, indices: list[int], split: str = "train") -> list[np.ndarray]:
    """Stored images by their position in the split's manifest (the eval reader's order)."""
    table = layout.read_parquet(
        data / split / layout.MANIFEST, columns=["shard", "offset", "bytes"]
    ).to_pylist()
    out = []
    for i in indices:
        row = table[i]
        with open(data / split / row["shard"], "rb") as f:
            f.seek(row["offset"])
            jpeg = f.read(row["bytes"])
        out.append(
            cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        )
    return out


# ---- run report ---------------------------------------------------------------------------------


def _column(rows: list[dict], key: str) -> list[float]:
    """One metric per epoch; NaN where a row lacks it or holds something else (plotted as a gap)."""
    return [
        float(r[key])
        if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
        else float("nan")
        for r in rows
    ]


def report(run: Path, out: Path) -> dict:
    """Curves (PNG beside `out`) and a Markdown table of this run's last epoch beside Table 2.

    metrics.jsonl is read tolerantly (`trainer.metrics.read_metrics`): a torn last line or
    garbage is skipped with a warning, and a metric a row lacks is a gap in its curve.
    """
    path = run / METRICS
    if not path.is_file():
        raise FigureError(f"{run}: no {METRICS} (is this an alextrain run directory?)")
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        rows = read_metrics(path)
    if not rows:
        raise FigureError(f"{path}: no readable epochs (empty, or not alextrain metrics)")
    for w in skipped:  # some epochs are readable: say what was skipped, and go on
        warnings.warn(w.message, stacklevel=2)
    png = out.with_suffix(".png")
    plt = _mpl()
    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=100)
    series = [
        (0, "train_loss", "train"),
        (0, "val_loss", "val"),
        (1, "train_top1_err", "train top-1"),
        (1, "val_top1_err", "val top-1"),
        (1, "val_top5_err", "val top-5"),
    ]
    for ax, key, label in series:
        values = _column(rows, key)
        if any(v == v for v in values):  # not all NaN
            axes[ax].plot(epochs, values, label=label, marker="." if len(rows) < 20 else None)
    lr = _column(rows, "lr")
    axes[2].plot(epochs, lr, marker="." if len(rows) < 20 else None)
    if any(v > 0 for v in lr) and all(v > 0 or v != v for v in lr):
        axes[2].set_yscale("log")
    for ax, title in zip(axes, ("loss", "error", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)
    last = rows[-1]
    top1, top5 = (_column([last], k)[0] for k in ("val_top1_err", "val_top5_err"))
    pct = lambda v: "n/a" if v != v else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"# Run report: {run}",
        "",
        f"![curves]({png.name})",
        "",
        "| model | top-1 err (%) | top-5 err (%) |",
        "|---|---:|---:|",
        f"| this run (epoch {last['epoch'] + 1}, centre crop) | {pct(top1)} | {pct(top5)} |",
    ]
    lines += [f"| paper: {name} | {t1} | {t5} |" for name, t1, t5 in PAPER_TABLE2]
    layout.write_atomic(out, ("\n".join(lines) + "\n").encode())
    return {"epochs": len(rows), "last": last, "png": str(png), "markdown": str(out)}


def feature_cache(checkpoint: Path, split: str) -> Path:
    """Where `neighbors` caches a split's features: beside the checkpoint, keyed on its content.

    The key is a hash of the checkpoint's bytes, so a checkpoint overwritten by a later epoch
    (same name, new weights) never reuses the old features.
    """
    with open(checkpoint, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    return checkpoint.parent / f"features-{checkpoint.stem}-{split}-{digest}.npy"


def extract_features(
    model,
    data: Path,
    split: str,
    crop: int,
    normalization: str,
    cache: Path,  # noqa: ANN001
    batch_size: int = 128,
    progress: bool = True,
    num_threads: int = 4,
) -> np.ndarray:
    """The last hidden layer (fc7, after ReLU; dropout off) of every sample, cached as .npy.

    Rows follow the split's manifest order (the eval reader's order on one rank). The loader
    runs on the device the model is on (a CUDA loader feeding a CPU model crashed). `cache`
    names the checkpoint's content (`feature_cache`); an existing file is used only if it is
    what this model gives (`_cache_problem`: shape, dtype, finite values, and its first rows
    computed again), else computed again. A new one is written atomically (fsync, rename) and
    older caches of the same checkpoint file and split are removed; where the folder cannot be
    written (permissions, a read-only filesystem) the features are kept in memory instead.
    """
    from tqdm import tqdm

    from pipeline.loader import EvalLoader, LoaderOptions

    device = next(model.parameters()).device
    opt = LoaderOptions(
        batch_size=batch_size,
        crop=crop,
        normalization=normalization,
        lighting="off",
        rank=0,
        world=1,
        device=device.type,
        num_threads=num_threads,
    )
    loader = EvalLoader(data, opt, split=split)
    n = loader.s.written
    model.eval()
    if cache.is_file():
        why, cached = _cache_problem(cache, n, lambda: _first_features(model, loader, device))
        if why is None:
            return cached
        warnings.warn(f"{cache}: damaged feature cache ({why}); computing it again", stacklevel=2)
    layout.remove_stale_tmp(cache.parent)  # what a killed or failed extraction left
    tmp = layout.tmp_path(cache)
    out: _Rows | None = None
    row = 0
    try:
        with torch.no_grad():
            for x, _ in tqdm(
                loader, total=-(-n // batch_size), unit="batch", disable=not progress, desc="features"
            ):
                feats = _features(model, x, device)
                out = out or _Rows(tmp, cache, (n, feats.shape[1]))
                out.write(feats)
                row += len(feats)
        if out is None or row != n:
            raise FigureError(f"{data}/{split}: the loader gave {row} samples, the manifest says {n}")
        bank = out.finish()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if bank is not None:  # kept in memory: nothing written
        return bank
    stem = cache.name.rsplit("-", 1)[0]
    for old in cache.parent.glob(f"{stem}-{'[0-9a-f]' * 16}.npy"):
        if old != cache:
            old.unlink(missing_ok=True)
    return np.load(cache, mmap_mode="r")


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class _Rows:
    """The feature rows as they come: appended to the cache's temporary file with plain writes
    (a full disk is an error naming the cache, never a SIGBUS as with a written memmap), or, where
    the cache's folder cannot be written, kept in memory with a warning."""

    def __init__(self, tmp: Path, cache: Path, shape: tuple[int, int]):
        self.tmp, self.cache, self.kept = tmp, cache, None
        try:
            self.f = os.fdopen(layout.open_exclusive(tmp), "wb")
        except OSError as e:
            if e.errno not in _NOT_WRITABLE:
                raise layout.LayoutError(layout.write_problem(cache, e)) from None
            warnings.warn(f"{layout.write_problem(cache, e)}; working without the cache", stacklevel=3)
            self.f, self.kept = None, []
            return
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        with layout.writing(cache):
            np.lib.format.write_array_header_1_0(self.f, {**header, "shape": shape})

    def write(self, feats: np.ndarray) -> None:
        if self.kept is not None:
            self.kept.append(feats)
            return
        with layout.writing(self.cache):
            self.f.write(np.ascontiguousarray(feats, np.float32).tobytes())

    def finish(self) -> np.ndarray | None:
        """The rows in memory, or None once the cache file is in place."""
        if self.kept is not None:
            return np.concatenate(self.kept)
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.cache)
        except OSError as e:
            if e.errno in layout.WRITE_ERRNOS:
                raise layout.LayoutError(layout.write_problem(self.cache, e)) from None
            raise FigureError(f"{self.cache}: cannot write the feature cache ({e.strerror})") from None
        return None


def _features(model, x: torch.Tensor, device: torch.device) -> np.ndarray:  # noqa: ANN001
    with torch.no_grad():
        return torch.cat([f.float().cpu() for f in model.features(x.to(device))], 1).numpy()


def _first_features(model, loader, device: torch.device) -> np.ndarray:  # noqa: ANN001
    for x, _ in loader:
        return _features(model, x, device)
    return np.zeros((0, 0), np.float32)


def _cache_problem(cache: Path, n: int, first: Callable[[], np.ndarray]) -> tuple[str | None, np.ndarray]:
    """(why the cache is not this model's features of the split's n samples, the cache): its
    header (n rows, float32), every value finite (read in blocks), and its first rows equal to
    the model's features computed again (`first`): an all-zero cache of the right shape is not."""
    try:
        cached = np.load(cache, mmap_mode="r")  # no pickles
    except (OSError, ValueError, EOFError) as e:  # truncated or garbage: it is only a cache
        return f"unreadable: {e.__class__.__name__}", None
    if cached.ndim != 2 or cached.dtype != np.float32 or cached.shape[0] != n:
        return f"{cached.dtype} {cached.shape}, not {n} rows of float32", None
    for o in range(0, n, 65536):
        if not np.isfinite(cached[o : o + 65536]).all():
            return "holds NaN or inf", None
    probe = first()
    if probe.shape[1:] != cached.shape[1:] or not np.allclose(
        cached[: len(probe)], probe, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(probe).max(initial=0)))
    ):
        return "its first rows are not this model's features", None
    return None, cached
