"""Figure 4 (right): the images of a split nearest each query in the network's last hidden layer.

Section 6.1 of the paper: "the five ILSVRC-2010 test images in the first column ... the six
training images that produce feature vectors in the last hidden layer with the smallest
Euclidean distance from the feature vector for the test image". So the default bank is the
training split, and a query found in the bank itself (the same image, sharded) is left out: its
own copy at distance 0 says nothing about what the network has learned. "The same image" is
decided by content, not path: the query goes through `alexprep shard`'s offline step, and a
bank sample whose stored JPEG has the same SHA-256 (the manifest's `sha256`) is the query.

The split's features are extracted once and cached beside the checkpoint, keyed on its content
and the split's images;
the search runs in blocks, so memory stays bounded whatever the split's size (ImageNet's
1.28M x 4096 floats is 21 GB).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.augment import load_stats
from pipeline.single import LIMITS
from preprocess.image import RejectedImage, process_file
from preprocess.walk import printable
from shards import layout
from shards.reader import load_classes
from trainer.errors import FigureError
from trainer.features import extract_features, feature_cache
from trainer.figures import class_names, load_for_figures, load_image, pyplot, save_figure, true_class


def find_neighbors(
    checkpoint: Path,
    data: Path | None,
    queries: list[Path],
    k: int = 6,
    split: str = "train",
    chunk: int = 65536,
    device: str = "auto",
    batch_size: int = 128,
    num_threads: int = 4,
    limits: tuple[int, int] = LIMITS,
    include_self: bool = False,
    progress: bool = True,
) -> tuple[list[dict], list[np.ndarray], Path]:
    """The k nearest samples of `split` to each query: (results, the queries' stored RGB, data).

    Each result: the query, its class when its path names one, the bank rows left out as the
    query's own copies (`excluded`), and per neighbour its row in the split's manifest, shard
    key, source file, class index and name, and distance. Bad queries fail before extraction.
    """
    model, cfg, data, checkpoint = load_for_figures(checkpoint, data, device)
    meta = layout.read_json(data / layout.DATASET_JSON)
    if split not in meta.get("splits", {}):
        raise FigureError(f"{data}: no split {split!r} to search (have {', '.join(sorted(meta['splits']))})")
    stats, classes = load_stats(data, own=False), load_classes(data)  # checked: load_for_figures
    names, _ = class_names(data, classes)
    loaded = [
        load_image(q, stats, cfg["crop"], False, meta["size"], cfg["normalization"], limits) for q in queries
    ]
    manifest = layout.read_parquet(
        data / split / layout.MANIFEST, columns=["key", "label", "source", "sha256"]
    ).to_pydict()
    excluded = [[] if include_self else _copies_of(q, meta, limits, manifest["sha256"]) for q in queries]
    dev = next(model.parameters()).device
    bank = extract_features(
        model,
        data,
        split,
        cfg["crop"],
        cfg["normalization"],
        feature_cache(checkpoint, data, split),
        batch_size,
        progress,
        num_threads,
    )
    check_query_memory(len(queries), bank.shape[1], chunk)
    with torch.no_grad():
        model.eval()
        q = torch.cat([torch.cat(model.features(x.to(dev)), 1) for _, x in loaded]).float()
    chunks = ((o, torch.from_numpy(np.array(bank[o : o + chunk]))) for o in range(0, len(bank), chunk))
    dist, idx = chunked_topk(q, chunks, k, excluded)
    results = []
    for i, path in enumerate(queries):
        truth, _ = true_class(path, classes)
        found = []
        for d, j in zip(dist[i].tolist(), idx[i].tolist(), strict=True):
            if d == float("inf"):  # fewer samples than k once the query's copies are left out
                continue
            label = manifest["label"][j]
            found.append(
                {
                    "index": j,
                    "key": manifest["key"][j],
                    "source": manifest["source"][j],
                    "class": label,
                    "name": names[label],
                    "distance": d,
                }
            )
        results.append(
            {
                "query": str(path),
                "query_class": names[truth] if truth is not None else None,
                "split": split,
                "excluded": excluded[i],
                "neighbors": found,
            }
        )
    return results, [rgb for rgb, _ in loaded], data


def _copies_of(query: Path, meta: dict, limits: tuple[int, int], hashes: list[str]) -> list[int]:
    """Rows of the split whose stored JPEG is the query's, made as `alexprep shard` made them."""
    try:
        enc = process_file(
            str(query), meta["size"], meta.get("quality", 90), max_pixels=limits[0], max_bytes=limits[1]
        )
    except RejectedImage:  # load_image already accepted it; a race with the file changing: no copies
        return []
    digest = hashlib.sha256(enc.jpeg).hexdigest()
    return [i for i, h in enumerate(hashes) if h == digest]


def chunked_topk(
    queries: torch.Tensor,
    bank_chunks,
    k: int,
    excluded: list[list[int]] | None = None,  # noqa: ANN001
) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest Euclidean distances from each query to a bank given in chunks.

    Memory is O(queries x (chunk + k)), whatever the bank's size. `bank_chunks` yields (offset,
    [n, d] tensor); `excluded[i]` lists bank rows that query i must not find (distance inf).
    Returns (distances, indices), ascending.
    """
    best_d = torch.full((len(queries), 0), float("inf"))
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    q = queries.float()
    for offset, chunk in bank_chunks:
        d = torch.cdist(q, chunk.float().to(q.device)).cpu()
        for i, rows in enumerate(excluded or []):
            for r in rows:
                if offset <= r < offset + len(chunk):
                    d[i, r - offset] = float("inf")
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


def plot_neighbors(results: list[dict], queries: list[np.ndarray], data: Path, path: Path) -> None:
    """One row per query: the query (with its class when known), then its neighbours, each
    labelled with its class and distance, as the paper's Figure 4 (right) shows them."""
    plt = pyplot()
    k = max(1, max(len(r["neighbors"]) for r in results))
    fig, axes = plt.subplots(
        len(queries), k + 1, figsize=(1.5 * (k + 1), 1.9 * len(queries)), dpi=100, squeeze=False
    )
    for row, (r, q) in enumerate(zip(results, queries, strict=True)):
        shown = stored_images(data, [n["index"] for n in r["neighbors"]], r["split"])
        labels = [f"query\n{printable(r['query_class'] or Path(r['query']).name)[:18]}"]  # as predict's
        labels += [f"{n['name'][:18]}\n{n['distance']:.1f}" for n in r["neighbors"]]
        for col, ax in enumerate(axes[row]):
            ax.set_axis_off()
            if col < len(labels):
                ax.imshow([q, *shown][col])
                ax.set_title(labels[col], fontsize=7, color="tab:red" if col == 0 else "black")
    fig.suptitle(f"nearest {results[0]['split']} images in the last hidden layer (Euclidean)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def stored_images(data: Path, indices: list[int], split: str = "train") -> list[np.ndarray]:
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
