"""Figure 1 and the LRN ablation, as one command: small CIFAR-10 nets trained for real.

Paper, Figure 1: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25%
training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons
(dashed line)." Section 3.3: on CIFAR-10, "a four-layer CNN achieved a 13% test error rate
without normalization and 11% with normalization".

Each variant is a normal `alextrain run` (its own run directory, metrics.jsonl, checkpoints),
so an interrupted ablation resumes where it stopped. The paper tuned each net's learning rate
separately ("the learning rates for each network were chosen independently to make training
as fast as possible"); `--lr` applies one rate to all, and is recorded.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from trainer.config import TrainConfig
from trainer.train import run

TARGET_TRAIN_ERROR = 0.25  # the paper's threshold
SECOND_TARGET = 0.50  # reached within a short CPU budget, for a ratio even when 25% is not

VARIANTS = {
    "relu": dict(activation="relu"),
    "tanh": dict(activation="tanh"),
    "relu-no-lrn": dict(activation="relu", lrn="off"),
}


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def epochs_to(rows: list[dict], target: float) -> int | None:
    """The first epoch count (1-based) whose training error is at or below `target`."""
    return next((r["epoch"] + 1 for r in rows if r["train_top1_err"] <= target), None)


def run_ablation(
    data: Path, out: Path, epochs: int, base: TrainConfig, variants: list[str], progress: bool = True
) -> dict:
    results = {}
    for name in variants:
        cfg = replace(
            base, data=str(data), out=str(out / name), arch="cifar", epochs=epochs, **VARIANTS[name]
        )
        done = _rows(out / name)
        if len(done) < epochs:
            run(cfg, resume=(out / name / "last.pt").exists(), progress=progress)
        rows = _rows(out / name)[:epochs]
        results[name] = {
            "train_error": [r["train_top1_err"] for r in rows],
            "test_error": [r.get("val_top1_err") for r in rows],
            "epochs_to_25pct_train_error": epochs_to(rows, TARGET_TRAIN_ERROR),
            "epochs_to_50pct_train_error": epochs_to(rows, SECOND_TARGET),
        }
    summary = {"epochs": epochs, "lr": base.lr, "variants": results}
    relu, tanh = results.get("relu", {}), results.get("tanh", {})
    for pct in ("25", "50"):
        key = f"epochs_to_{pct}pct_train_error"
        if relu.get(key) and tanh.get(key):
            summary[f"tanh_over_relu_at_{pct}pct"] = tanh[key] / relu[key]
    if "relu" in results and "relu-no-lrn" in results:
        summary["final_test_error_with_lrn"] = results["relu"]["test_error"][-1]
        summary["final_test_error_without_lrn"] = results["relu-no-lrn"]["test_error"][-1]
    (out / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_figure1(summary, out / "fig1.png")
    return summary


def plot_figure1(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"relu": "-", "tanh": "--", "relu-no-lrn": ":"}
    for name, r in summary["variants"].items():
        xs = range(1, len(r["train_error"]) + 1)
        ax.plot(xs, r["train_error"], styles.get(name, "-"), label=name)
    ax.axhline(TARGET_TRAIN_ERROR, color="grey", lw=0.8)
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error rate")
    ax.set_ylim(0, 1)
    ax.set_title("Figure 1: CIFAR-10, four-layer CNN")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
