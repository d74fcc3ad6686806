"""The paper's figures from a user's own checkpoint: Figure 3 (conv1 kernels) and Figure 4, left
(top-5 predictions); the shared pieces of every figure command (loading a checkpoint with its
data, class names, saving). Figure 4, right, is `trainer.neighbors`; the run report,
`trainer.report`.

Images given by the user are preprocessed exactly as the val pipeline sees them: the offline
step (shorter side 256, centre crop, JPEG q90, as `alexprep shard` stores them), then the
paper's 10 crops of 224 (or, with --centre-crop, the centre one) minus the mean image
(`pipeline.single.image_input`).
A figure command writes into the run folder unless told otherwise (`default_output`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pipeline.augment import load_stats
from pipeline.single import IMAGE_SIZE, LIMITS, UnusableImage, image_input
from preprocess.walk import printable
from shards import layout
from shards.reader import DatasetError, load_classes, load_dataset
from trainer import imagenet
from trainer.errors import CheckpointError, FigureError
from trainer.evaluate import predict_each


def pyplot():  # noqa: ANN201
    """matplotlib.pyplot on the Agg backend, or a FigureError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise FigureError(
            "matplotlib is not installed; pip install 'alexnet2012[figures]' (or matplotlib)"
        ) from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint argument means: the folder itself, or the file's folder."""
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def load_for_figures(checkpoint: Path, data: Path | None, device: str = "cpu"):  # noqa: ANN201
    """(model, config, data folder, checkpoint file): the model of a checkpoint or run folder on
    the device asked for, and the data from `data` or the checkpoint's config, checked to fit."""
    from trainer.checkpoint import resolve
    from trainer.inference import check_fits, load_model, pick_device
    from trainer.model import ModelConfig
    from trainer.runstate import data_identity

    checkpoint = resolve(checkpoint)
    model, state = load_model(checkpoint, pick_device(device))
    cfg = state["config"]  # flat: load_model read it
    if data is None and not cfg.get("data"):
        raise CheckpointError(f"{checkpoint}: names no dataset; pass --data OUT")
    data = data or Path(cfg["data"])
    if not (data / layout.DATASET_JSON).is_file():
        raise DatasetError(
            f"{data}: not a sharded dataset; pass --data OUT (the shards the model was trained on)"
        )
    meta = load_dataset(data)
    classes = load_classes(data)
    made_for = ModelConfig.from_dict(state["model_config"]).num_classes  # load_model checked it
    if len(classes) != made_for:
        raise CheckpointError(f"{checkpoint}: made for {made_for} classes, {data} has {len(classes)}")
    check_fits(state, checkpoint, data, data_identity(data, meta))
    return model, cfg, data, checkpoint


def save_figure(fig, path: Path) -> None:  # noqa: ANN001
    """A matplotlib figure to `path` atomically (format from the suffix), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png")
    pyplot().close(fig)
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


def kernel_scale(k: int) -> int:
    """Pixels per weight that make a k x k kernel about 44 px wide: AlexNet's 11x11 at 4, as
    before; the CIFAR net's 5x5 at 9 (at 4 it was a 178x90 px thumbnail)."""
    return max(4, -(-44 // k))


def kernel_grid(towers: list[np.ndarray], cols: int = 8, scale: int = 4, pad: int = 2) -> Image.Image:
    """The kernels alone, pixel-exact: one row block per tower, each kernel min-max
    contrast-normalised on its own."""
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


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError):
        return ImageFont.load_default()


def kernel_figure(
    towers: list[np.ndarray], title: str, cols: int = 8, scale: int | None = None, pad: int = 2
) -> Image.Image:
    """Figure 3: a title, then per tower a label ("tower 1 (GPU 1): 48 kernels", as the paper's
    caption reads the two halves) above its block of kernels (`kernel_grid`, one per tower)."""
    k = towers[0].shape[-1]
    scale = scale or kernel_scale(k)
    blocks = [kernel_grid([t], cols, scale, pad) for t in towers]
    title_font, label_font = _font(14), _font(11)
    labels = (
        [f"tower {i + 1} (GPU {i + 1}): {len(t)} kernels" for i, t in enumerate(towers)]
        if len(towers) > 1
        else [f"{len(towers[0])} kernels (one tower)"]
    )
    margin, title_h, label_h = 8, 24, 18
    width = max(
        max(b.width for b in blocks) + 2 * margin,
        int(title_font.getlength(title)) + 2 * margin,
        max(int(label_font.getlength(t)) for t in labels) + 2 * margin,
    )
    height = title_h + sum(label_h + b.height for b in blocks) + margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((margin, 4), title, fill="black", font=title_font)
    y = title_h
    for label, block in zip(labels, blocks, strict=True):
        draw.text((margin, y + 2), label, fill=(60, 60, 60), font=label_font)
        y += label_h
        canvas.paste(block, (margin, y))
        y += block.height
    return canvas


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
    like `n01440764_tench.JPEG`), DATA/class_names.json, the ILSVRC-2012 table shipped with the
    package (`trainer.imagenet`) for a wnid, then the class's own name unless it is a bare wnid
    (a folder called `cat` is its own name; `n09999999` is not).
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
        human = human or imagenet.name_of(str(key))
        if not human and c.get("name") and not _WNID.match(str(c["name"])):
            human = str(c["name"])
        if not human:
            missing.append(c["index"])
        names.append(str(human or c.get("name") or c["index"]))
    return names, missing


def true_class(path: Path, classes: list[dict]) -> tuple[int | None, str | None]:
    """The class an image's path names, and a human name the file name gives, if any.

    `.../cat/0000.jpg` (one folder per class) -> the class `cat`, whatever the file is called
    (`cat/truck.jpg` is a cat: the folder is how a class is given, as `alexprep shard` reads it);
    elsewhere `n01440764_tench.JPEG` (ImageNet's naming) -> the class with that wnid, named "tench".
    """
    by_key = {}
    for c in classes:
        for key in (c.get("name"), c.get("wnid")):
            if key:
                by_key[str(key)] = c["index"]
    head, _, rest = path.stem.partition("_")
    named = rest.replace("_", " ") if rest and not rest.isdigit() else None
    folder = by_key.get(path.parent.name)
    if folder is not None:
        return folder, named if by_key.get(head) == folder else None
    return by_key.get(head), named if head in by_key else None


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
    stats, classes = load_stats(data, own=False), load_classes(data)  # checked: load_for_figures
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
        probs = predict_each([model], x.to(device))[0][0].cpu()
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
    plt = pyplot()
    n = len(results)
    fig, axes = plt.subplots(
        2, n, figsize=(2.4 * n, 4.2), dpi=100, squeeze=False, gridspec_kw={"height_ratios": [3, 2]}
    )
    for j, r in enumerate(results):
        axes[0, j].imshow(r["_rgb"])
        axes[0, j].set_axis_off()
        # under the image, as in the paper; a name's control characters and non-UTF-8 bytes
        # escaped (matplotlib's text layout raises on the surrogates that carry such bytes)
        label = printable(r["true_name"] or Path(r["image"]).name)[:22]
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
