"""`alextrain report RUN`: a run's curves, and its last epoch beside the paper's Table 2 when
the comparison means something.

Table 2 is ILSVRC-2012: 1,000 classes, 50,000 val images. A 10-class top-5 error (CIFAR-10, the
demo) is near zero by construction and would read as "better than the paper", so the paper's
rows are shown only when the run's data has exactly the ILSVRC-2012 classes (checked against the
wnid table shipped in `trainer.imagenet`); otherwise the report says why it leaves them out.

Epochs are numbered from 0, as in metrics.jsonl, the training log and --lr-steps; the curves'
x axis is the number of epochs trained (epoch e is plotted at e + 1), as the paper's Figure 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from shards import layout
from shards.reader import DatasetError, load_classes
from trainer import imagenet
from trainer.config import flatten
from trainer.errors import FigureError
from trainer.figures import pyplot, save_figure
from trainer.metrics import METRICS, read_metrics

# Table 2 of the paper (ILSVRC-2012): top-1 / top-5 error, val where given, else test.
PAPER_TABLE2 = [
    ("1 CNN", 40.7, 18.2),
    ("5 CNNs", 38.1, 16.4),
    ("1 CNN* (pre-trained, 6th conv)", 39.0, 16.6),
    ("7 CNNs*", 36.7, 15.4),
]
ILSVRC2012_VAL_IMAGES = 50_000


def _column(rows: list[dict], key: str) -> list[float]:
    """One metric per epoch; NaN where a row lacks it or holds something else (plotted as a gap)."""
    return [
        float(r[key])
        if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
        else float("nan")
        for r in rows
    ]


def table2_comparison(run: Path) -> tuple[bool, str]:
    """(whether this run may stand beside Table 2, the reason in one sentence)."""
    config = run / "config.json"
    try:
        cfg = flatten(layout.read_json(config), str(config))  # nested by section, or flat
    except (layout.LayoutError, ValueError):
        return False, f"not compared with the paper's Table 2: cannot read {config} to see the run's data"
    n = cfg.get("num_classes")
    if isinstance(n, int) and n != imagenet.NUM_CLASSES:
        return False, (
            f"not compared with the paper's Table 2 (ILSVRC-2012, 1,000 classes): this run has {n} "
            f"classes, and its top-5 error over {n} classes does not measure the same thing"
        )
    data = Path(str(cfg.get("data") or ""))
    try:
        classes = load_classes(data)
    except DatasetError:
        return False, (
            f"not compared with the paper's Table 2: the run's data ({data}) is not readable here, "
            "so its classes cannot be checked to be ILSVRC-2012's"
        )
    keys = [str(c.get("wnid") or c.get("name")) for c in classes]
    if not imagenet.is_imagenet_1k(keys):
        return False, (
            f"not compared with the paper's Table 2: {data} has {len(keys)} classes, "
            "not the 1,000 ILSVRC-2012 wnids"
        )
    return (
        True,
        "ILSVRC-2012 classes: compared with the paper's Table 2 (its numbers average 10 patches; "
        "`alextrain eval --ten-crop` gives this run's)",
    )


def report(run: Path, out: Path) -> dict:
    """Curves (PNG beside `out`) and a Markdown table of this run's last epoch, beside Table 2
    for ImageNet-1k runs.

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
    _plot_curves(rows, png)
    last = rows[-1]
    top1, top5 = (_column([last], k)[0] for k in ("val_top1_err", "val_top5_err"))
    pct = lambda v: "n/a" if v != v else f"{100 * v:.1f}"  # noqa: E731
    compare, why = table2_comparison(run)
    samples = last.get("val_samples")
    lines = [
        f"# Run report: {run}",
        "",
        f"![curves]({png.name})",
        "",
        "| model | top-1 err (%) | top-5 err (%) |",
        "|---|---:|---:|",
        f"| this run (epoch {last['epoch']}, numbered from 0; centre crop) | {pct(top1)} | {pct(top5)} |",
    ]
    if compare:
        lines += [f"| paper: {name} | {t1} | {t5} |" for name, t1, t5 in PAPER_TABLE2]
    lines += ["", why + "."]
    if compare and isinstance(samples, int) and samples != ILSVRC2012_VAL_IMAGES:
        lines.append(
            f"This run was validated on {samples:,} images, not ILSVRC-2012's {ILSVRC2012_VAL_IMAGES:,}."
        )
    layout.write_atomic(out, ("\n".join(lines) + "\n").encode())
    return {
        "epochs": len(rows),
        "last": last,
        "png": str(png),
        "markdown": str(out),
        "compared_with_paper": compare,
        "why": why,
    }


def _plot_curves(rows: list[dict], png: Path) -> None:
    plt = pyplot()
    trained = [r["epoch"] + 1 for r in rows]  # epoch e ends with e + 1 epochs trained
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=100)
    series = [
        (0, "train_loss", "train"),
        (0, "val_loss", "val"),
        (1, "train_top1_err", "train top-1"),
        (1, "val_top1_err", "val top-1"),
        (1, "val_top5_err", "val top-5"),
    ]
    marker = "." if len(rows) < 20 else None
    for ax, key, label in series:
        values = _column(rows, key)
        if any(v == v for v in values):  # not all NaN
            axes[ax].plot(trained, values, label=label, marker=marker)
    lr = _column(rows, "lr")
    axes[2].plot(trained, lr, marker=marker)
    if any(v > 0 for v in lr) and all(v > 0 or v != v for v in lr):
        axes[2].set_yscale("log")
    for ax, title in zip(axes, ("loss", "error", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epochs trained")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, png)
