"""The paper's figures from a user's own checkpoint: Figure 3 (conv1 kernels), Figure 4 (top-5
predictions; nearest neighbours in the last hidden layer), and a run report with curves.

Images given by the user are preprocessed exactly as the val pipeline sees them: the offline
step (shorter side 256, centre crop, JPEG q90, as `alexprep shard` stores them), then the
centre 224 crop (or the 10 crops) minus the mean image (`pipeline.single.image_input`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.augment import load_stats
from pipeline.single import IMAGE_SIZE, UnusableImage, image_input
from shards import layout
from trainer.evaluate import predict_each

# Table 2 of the paper (ILSVRC-2012): top-1 / top-5 error, val where given, else test.
PAPER_TABLE2 = [
    ("1 CNN", 40.7, 18.2),
    ("5 CNNs", 38.1, 16.4),
    ("1 CNN* (pre-trained, 6th conv)", 39.0, 16.6),
    ("7 CNNs*", 36.7, 15.4),
]


class FigureError(Exception):
    """A user-facing problem: an image that does not decode, a checkpoint without conv1, ..."""


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- Figure 3 -----------------------------------------------------------------------------------


def conv1_kernels(state: dict) -> list[np.ndarray]:
    """conv1 weights per tower, each [N, 3, k, k]; FigureError if there is no such layer."""
    weights = state.get("model", {})
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
    path: Path, stats, crop: int, ten_crop: bool, size: int = IMAGE_SIZE, normalization: str = "mean-image"
) -> tuple[np.ndarray, torch.Tensor]:
    """(the stored RGB image, the network input): `pipeline.single.image_input`, FigureError if unusable."""
    try:
        return image_input(path, stats, crop, ten_crop, normalization, size)
    except UnusableImage as e:
        raise FigureError(str(e)) from None


def _classes(data: Path) -> list[dict]:
    return json.loads((data / layout.CLASSES_JSON).read_text())


def _name(c: dict) -> str:
    return c.get("label") or c.get("name") or str(c["index"])


# ---- Figure 4 (left) ----------------------------------------------------------------------------


def predict_images(
    model, data: Path, images: list[Path], crop: int, ten_crop: bool, k: int = 5
) -> list[dict]:  # noqa: ANN001
    stats, classes = load_stats(data), _classes(data)
    size = json.loads((data / layout.DATASET_JSON).read_text())["size"]
    by_wnid = {c.get("wnid"): c["index"] for c in classes if c.get("wnid")}
    results = []
    for path in images:
        rgb, x = load_image(path, stats, crop, ten_crop, size)
        probs = predict_each([model], x, amp=False)[0][0]
        top = probs.topk(min(k, len(probs)))
        truth = by_wnid.get(path.name.split("_", 1)[0])
        results.append(
            {
                "image": str(path),
                "top": [
                    {"index": int(i), "name": _name(classes[int(i)]), "prob": float(p)}
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
                "true_index": truth,
                "true_name": _name(classes[truth]) if truth is not None else None,
                "true_prob": float(probs[truth]) if truth is not None else None,
                "_rgb": rgb,
            }
        )
    return results


def plot_predictions(results: list[dict], path: Path) -> None:
    plt = _mpl()
    n = len(results)
    fig, axes = plt.subplots(
        2, n, figsize=(2.4 * n, 4.2), dpi=100, squeeze=False, gridspec_kw={"height_ratios": [3, 2]}
    )
    for j, r in enumerate(results):
        axes[0, j].imshow(r["_rgb"])
        axes[0, j].set_axis_off()
        axes[0, j].set_title((r["true_name"] or Path(r["image"]).name)[:22], fontsize=8)
        names = [t["name"][:18] for t in r["top"]][::-1]
        probs = [t["prob"] for t in r["top"]][::-1]
        colours = ["tab:red" if t["index"] == r["true_index"] else "tab:blue" for t in r["top"]][::-1]
        axes[1, j].barh(range(len(probs)), probs, color=colours)
        axes[1, j].set_yticks(range(len(probs)), names, fontsize=7)
        axes[1, j].set_xlim(0, 1)
        axes[1, j].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
    fig.savefig(path)
    plt.close(fig)


def train_images(data: Path, indices: list[int], split: str = "train") -> list[np.ndarray]:
    """Stored images by their position in the split's manifest (the eval reader's order)."""
    table = pq.read_table(data / split / layout.MANIFEST, columns=["shard", "offset", "bytes"]).to_pylist()
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


def report(run: Path, out: Path) -> dict:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FigureError(f"{run}: no metrics.jsonl (is this an alextrain run directory?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    if not rows:
        raise FigureError(f"{path}: empty")
    plt = _mpl()
    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=100)
    axes[0].plot(epochs, [r["train_loss"] for r in rows], label="train")
    if "val_loss" in rows[0]:
        axes[0].plot(epochs, [r["val_loss"] for r in rows], label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [r["train_top1_err"] for r in rows], label="train top-1")
    if "val_top1_err" in rows[0]:
        axes[1].plot(epochs, [r["val_top1_err"] for r in rows], label="val top-1")
        axes[1].plot(epochs, [r["val_top5_err"] for r in rows], label="val top-5")
    axes[1].set_title("error")
    axes[2].semilogy(epochs, [r["lr"] for r in rows])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png)
    plt.close(fig)
    last = rows[-1]
    top1, top5 = (100 * last.get(k, float("nan")) for k in ("val_top1_err", "val_top5_err"))
    lines = [
        f"# Run report: {run}",
        "",
        f"![curves]({png.name})",
        "",
        "| model | top-1 err (%) | top-5 err (%) |",
        "|---|---:|---:|",
        f"| this run (epoch {last['epoch'] + 1}, centre crop) | {top1:.1f} | {top5:.1f} |",
    ]
    lines += [f"| paper: {name} | {t1} | {t5} |" for name, t1, t5 in PAPER_TABLE2]
    out.write_text("\n".join(lines) + "\n")
    return {"epochs": len(rows), "last": last, "png": str(png), "markdown": str(out)}


def extract_features(
    model,
    data: Path,
    split: str,
    crop: int,
    normalization: str,
    cache: Path,  # noqa: ANN001
    batch_size: int = 128,
    progress: bool = True,
) -> np.ndarray:
    """The last hidden layer (fc7, after ReLU; dropout off) of every sample, cached as .npy.

    Rows follow the split's manifest order (the eval reader's order on one rank). Reused when
    the cache is newer than the checkpoint it came from; written atomically.
    """
    from tqdm import tqdm

    from pipeline.loader import EvalLoader, LoaderOptions

    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    opt = LoaderOptions(
        batch_size=batch_size,
        crop=crop,
        normalization=normalization,
        lighting="off",
        rank=0,
        world=1,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    loader = EvalLoader(data, opt, split=split)
    n = loader.s.written
    tmp = cache.with_name(f".{cache.name}.tmp")
    bank = None
    row = 0
    model.eval()
    with torch.no_grad():
        for x, _ in tqdm(
            loader, total=-(-n // batch_size), unit="batch", disable=not progress, desc="features"
        ):
            feats = torch.cat([f.float().cpu() for f in model.features(x)], 1).numpy()
            if bank is None:
                bank = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, feats.shape[1]))
            bank[row : row + len(feats)] = feats
            row += len(feats)
    bank.flush()
    del bank
    os.replace(tmp, cache)
    return np.load(cache, mmap_mode="r")
