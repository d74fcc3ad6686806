"""Figure 1 under the paper's conditions, and the LRN ablation beside it: small CIFAR-10 nets
trained for real.

Paper, Figure 1: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25%
training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons
(dashed line). The learning rates for each network were chosen independently to make training
as fast as possible. No regularization of any kind was employed."

So the ReLU/tanh pair here has no weight decay, no dropout, no mirror, no PCA lighting, no LRN,
and a fixed learning rate per net, chosen by a sweep this module runs and records: each
candidate lr trains each net for the same few steps, and the lr with the lowest training error
over those steps wins (a diverged run loses). Section 3.3's LRN comparison ("13% test error
without normalization and 11% with") is separate: `relu-lrn` is the ReLU net with LRN, otherwise
the same as `relu` (its lr too), so the two differ in LRN only; `tanh-lrn` is the same for tanh.
With both, the pair relu-lrn/tanh-lrn is Figure 1 read as "the paper's four-layer net had LRN"
(Krizhevsky's own CIFAR-10 configuration of that shape did); its ratio is reported beside the
literal one.

Each run is a normal `alextrain run` (its own run directory, metrics.jsonl, checkpoints), so an
interrupted figure resumes where it stopped; directories are named by net and lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from shards import layout
from trainer.checkpoint import config_changes
from trainer.config import TrainConfig
from trainer.errors import TrainError
from trainer.guard import NonFiniteError
from trainer.metrics import METRICS, read_metrics
from trainer.train import resolve_data, run

TARGET_TRAIN_ERROR = 0.25  # the paper's threshold
SECOND_TARGET = 0.50  # reached within a short CPU budget, for a ratio even when 25% is not
PAPER_RATIO = 6.0  # "six times faster"

# Figure 1's caption: no regularisation of any kind, a fixed lr (no schedule).
PAPER_CONDITIONS = dict(arch="cifar", weight_decay=0.0, mirror=False, lighting="off", max_drops=0)
NETS = {  # the Figure 1 pair
    "relu": dict(activation="relu", lrn="off"),
    "tanh": dict(activation="tanh", lrn="off"),
}
ABLATION = {  # section 3.3: each differs from its net in LRN only
    "relu-lrn": dict(activation="relu", lrn="cuda-convnet"),
    "tanh-lrn": dict(activation="tanh", lrn="cuda-convnet"),
}
VARIANTS = {**NETS, **ABLATION}
SWEEP_LRS = (0.003, 0.01, 0.03)
EXTEND = 2  # extra sweep points past an end of the grid where the best lr lies
INIT_NOTE = {
    "paper": "every layer N(0, 0.01^2), section 5",
    "cuda-convnet": "conv1 N(0, 1e-4^2), the rest N(0, 0.01^2): cuda-convnet's layers-18pct",
}
LR_OF = {"relu-lrn": "relu", "tanh-lrn": "tanh"}  # an ablation uses its net's chosen lr
PAIRS = {  # (ReLU net, tanh net) -> the key prefix of their ratios in ablation.json
    ("relu", "tanh"): "tanh_over_relu",
    ("relu-lrn", "tanh-lrn"): "tanh_lrn_over_relu_lrn",
}


def _rows(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / METRICS)


def epochs_to(rows: list[dict], target: float) -> int | None:
    """The first epoch count (1-based) whose training error is at or below `target`."""
    return next((r["epoch"] + 1 for r in rows if r["train_top1_err"] <= target), None)


def _config(base: TrainConfig, data: Path, run_dir: Path, name: str, lr: float, epochs: int) -> TrainConfig:
    return replace(
        base, data=str(data), out=str(run_dir), lr=lr, epochs=epochs, **PAPER_CONDITIONS, **VARIANTS[name]
    )


def _train(cfg: TrainConfig, progress: bool) -> list[dict]:
    """Train (or resume) one run to cfg.epochs; a finished run with the same settings is only
    read back, one made with other settings (another --sweep-steps, --init, ...) is refused."""
    run_dir = Path(cfg.out)
    saved = run_dir / "config.json"
    if saved.is_file():  # compared as `run` would: with what the data fills in (classes, val split)
        changes = config_changes(layout.read_json(saved), resolve_data(replace(cfg))[0].to_dict())
        if changes:
            raise TrainError(f"{run_dir}: made with other settings: {'; '.join(changes)}; use another --out")
    if len(_rows(run_dir)) < cfg.epochs:
        run(cfg, resume=(run_dir / "last.pt").exists(), progress=progress)
    return _rows(run_dir)[: cfg.epochs]


@dataclass(frozen=True)
class SweepLength:
    """How long each sweep point trains: `epochs` epochs of `steps` steps (None: whole epochs).
    The criterion is the training error over the last of them: one epoch finds the lr that
    starts fastest, more find the one that keeps going (closer to "fastest to 25 %")."""

    steps: int | None = None
    epochs: int = 1


def _sweep_point(
    base: TrainConfig, data: Path, out: Path, name: str, lr: float, length: SweepLength, progress: bool
) -> dict:
    cfg = _config(base, data, out / "sweep" / f"{name}-lr{lr:g}", name, lr, length.epochs)
    cfg = replace(cfg, steps_per_epoch=length.steps) if length.steps else cfg
    try:
        rows = _train(cfg, progress)
    except NonFiniteError:  # the run stopped at its first NaN loss: this lr diverged
        return {
            "lr": lr,
            "steps": 0,
            "epochs": 0,
            "train_loss": None,
            "train_top1_err": None,
            "diverged": True,
        }
    last = rows[-1]
    finite = all(math.isfinite(r["train_loss"]) for r in rows)
    return {
        "lr": lr,
        "steps": sum(r["steps"] for r in rows),
        "epochs": len(rows),
        "train_loss": last["train_loss"] if finite else None,  # strict JSON: no NaN
        "train_top1_err": last["train_top1_err"],
        "diverged": not finite,
    }


def best_lr(rows: list[dict]) -> float | None:
    ok = [r for r in rows if not r["diverged"]]
    return min(ok, key=lambda r: r["train_top1_err"])["lr"] if ok else None


def sweep(
    data: Path,
    out: Path,
    base: TrainConfig,
    nets: list[str],
    lrs: list[float],
    length: SweepLength,
    progress: bool,
) -> dict:
    """Train each net at each lr for `length`; {net: {"rows": [...], "best_lr": lr}}.

    The best is the lowest training error over the last epoch (a diverged run never wins). When it
    lies at an end of the grid, the grid is extended past that end by x3 (at most EXTEND times),
    so the chosen lr is a real optimum of the sweep rather than its edge.
    """
    result = {}
    for name in nets:
        rows = sorted(
            (_sweep_point(base, data, out, name, lr, length, progress) for lr in sorted(set(lrs))),
            key=lambda r: r["lr"],
        )
        for _ in range(EXTEND):
            best = best_lr(rows)
            if best is None or len(rows) < 2 or rows[0]["lr"] < best < rows[-1]["lr"]:
                break
            lr = float(f"{best / 3:.1g}") if best == rows[0]["lr"] else float(f"{best * 3:.1g}")
            rows = sorted(
                [*rows, _sweep_point(base, data, out, name, lr, length, progress)], key=lambda r: r["lr"]
            )
        result[name] = {"rows": rows, "best_lr": best_lr(rows)}
    return result


def run_figure1(
    data: Path,
    out: Path,
    epochs: dict[str, int],
    base: TrainConfig,
    variants: list[str],
    lrs: list[float],
    length: SweepLength,
    progress: bool = True,
) -> dict:
    """The sweep, then each variant at its chosen lr for epochs[variant] epochs; ablation.json + PNG.

    `lrs` with one value skips the sweep (that lr for every net).
    """
    out.mkdir(parents=True, exist_ok=True)
    nets = sorted({LR_OF.get(v, v) for v in variants}, key=list(VARIANTS).index)
    swept = sweep(data, out, base, nets, lrs, length, progress) if len(lrs) > 1 else {}
    chosen = {n: (swept[n]["best_lr"] if n in swept else lrs[0]) for n in nets}
    results = {}
    for name in variants:
        lr = chosen[LR_OF.get(name, name)]
        if lr is None:
            results[name] = {"lr": None, "note": "every lr of the sweep diverged"}
            continue
        try:
            rows = _train(_config(base, data, out / f"{name}-lr{lr:g}", name, lr, epochs[name]), progress)
        except NonFiniteError as e:
            results[name] = {"lr": lr, "note": f"diverged at lr {lr:g} ({e})"}
            continue
        results[name] = {
            "lr": lr,
            "train_error": [r["train_top1_err"] for r in rows],
            "test_error": [r.get("val_top1_err") for r in rows],
            "epochs_to_25pct_train_error": epochs_to(rows, TARGET_TRAIN_ERROR),
            "epochs_to_50pct_train_error": epochs_to(rows, SECOND_TARGET),
        }
    summary = {
        "conditions": {**PAPER_CONDITIONS, "init": base.init},
        "sweep": {"steps": length.steps, "epochs": length.epochs, "lrs": lrs, "nets": swept},
        "epochs": epochs,
        "variants": results,
        "paper_ratio_at_25pct": PAPER_RATIO,
    }
    summary.update(ratios(results))
    if "relu" in results and "relu-lrn" in results and results["relu"].get("test_error"):
        summary["final_test_error_without_lrn"] = results["relu"]["test_error"][-1]
        summary["final_test_error_with_lrn"] = results["relu-lrn"]["test_error"][-1]
    layout.write_json(out / "ablation.json", summary)
    plot_figure1(summary, out / "fig1.png")
    layout.write_atomic(out / "fig1.md", markdown(summary).encode())
    return summary


def markdown(summary: dict) -> str:
    """The sweep table and the per-net results as Markdown (docs/figures.md quotes it)."""
    init = summary["conditions"].get("init", "paper")
    lines = [f"Weights: {init} init ({INIT_NOTE[init]}).", ""]
    for net, s in summary["sweep"]["nets"].items():
        lines += [
            f"Sweep, {net} ({sweep_span(s['rows'][0])} per lr, training error over the last epoch):",
            "",
            "| lr | train err | train loss | |",
            "|---:|---:|---:|---|",
        ]
        for r in s["rows"]:
            mark = "diverged" if r["diverged"] else ("**chosen**" if r["lr"] == s["best_lr"] else "")
            loss = "nan" if r["train_loss"] is None else f"{r['train_loss']:.3f}"
            lines.append(f"| {r['lr']:g} | {r['train_top1_err']:.3f} | {loss} | {mark} |")
        lines.append("")
    lines += [
        "| net | lr | epochs run | train err, epoch 1 | last epoch | test err, last | "
        "epochs to 50 % train err | to 25 % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in summary["variants"].items():
        if not r.get("train_error"):
            continue
        n = len(r["train_error"])
        to = [r[f"epochs_to_{p}pct_train_error"] or f"> {n}" for p in ("50", "25")]
        lines.append(
            f"| {name} | {r['lr']:g} | {n} | {r['train_error'][0]:.3f} | {r['train_error'][-1]:.3f} | "
            f"{r['test_error'][-1]:.3f} | {to[0]} | {to[1]} |"
        )
    lines += ["", *(f"- {line}" for line in ratio_lines(summary))]
    return "\n".join(lines) + "\n"


def sweep_span(row: dict) -> str:
    """How long a sweep point trained, for fig1's output and fig1.md."""
    return f"{row['steps']} steps of 128" + (f" in {row['epochs']} epochs" if row["epochs"] > 1 else "")


def ratio_lines(summary: dict) -> list[str]:
    """One line per ratio in `summary` (what fig1 prints and fig1.md lists), then the paper's."""
    lines = []
    for (fast, slow), key in PAIRS.items():
        for pct in ("25", "50"):
            ratio = summary.get(f"{key}_at_{pct}pct")
            if ratio:
                bound = "" if ratio["bound"] == "=" else "> "
                lines.append(f"{slow} / {fast} epochs to {pct} % training error: {bound}{ratio['ratio']:.2f}")
        common = summary.get(f"{key}_at_common_level")
        if common:
            lines.append(
                f"{slow} / {fast} at the lowest training error both reached ({common['level']:.3f}): "
                f"{common['tanh']} / {common['relu']} epochs = {common['ratio']:.2f}"
            )
    return [*lines, f"paper, at 25 %: about {summary['paper_ratio_at_25pct']:g}"]


def ratios(results: dict) -> dict:
    """tanh/ReLU epochs to 25% (and 50%) training error for each pair of PAIRS that ran; a lower
    bound when the tanh net never got there, and the ratio at the lowest level both reached.

    When ReLU reached the target and tanh did not within its epochs, tanh needs more than its
    epoch count, so epochs_tanh / epochs_relu > that count / epochs_relu: reported with `>`.
    """
    out = {}
    for (fast, slow), key in PAIRS.items():
        relu, tanh = results.get(fast, {}), results.get(slow, {})
        if not (relu.get("train_error") and tanh.get("train_error")):
            continue
        common = common_level(relu["train_error"], tanh["train_error"])
        if common:
            out[f"{key}_at_common_level"] = common
        for pct in ("25", "50"):
            at = f"epochs_to_{pct}pct_train_error"
            r, t = relu.get(at), tanh.get(at)
            if r and t:
                out[f"{key}_at_{pct}pct"] = {"ratio": t / r, "bound": "="}
            elif r and len(tanh["train_error"]) > r:  # a bound <= 1 would say nothing
                out[f"{key}_at_{pct}pct"] = {"ratio": len(tanh["train_error"]) / r, "bound": ">"}
    return out


def common_level(relu: list[float], tanh: list[float]) -> dict | None:
    """Epochs each net took to the lowest training error both reached, and their ratio.

    The paper's 25 % is one level; when a CPU budget leaves one net above it, this is the
    lowest level at which the same question ("how many times faster?") still has an answer."""
    level = max(min(relu), min(tanh))
    rows = {
        n: [{"epoch": e, "train_top1_err": v} for e, v in enumerate(errs)]
        for n, errs in (("relu", relu), ("tanh", tanh))
    }
    r, t = epochs_to(rows["relu"], level), epochs_to(rows["tanh"], level)
    return {"level": level, "relu": r, "tanh": t, "ratio": t / r} if r and t else None


def plot_figure1(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"relu": "-", "tanh": "--", "relu-lrn": ":", "tanh-lrn": "-."}
    for name, r in summary["variants"].items():
        if not r.get("train_error"):
            continue
        xs = range(1, len(r["train_error"]) + 1)
        ax.plot(xs, r["train_error"], styles.get(name, "-"), label=f"{name} (lr {r['lr']:g})")
    ax.axhline(TARGET_TRAIN_ERROR, color="grey", lw=0.8)
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error rate")
    ax.set_ylim(0, 1)
    init = summary["conditions"].get("init", "paper")
    ax.set_title(f"Figure 1: CIFAR-10, four-layer CNN, no regularisation, {init} init", fontsize=10)
    ax.legend()
    fig.tight_layout()
    tmp = layout.tmp_path(path)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    layout.commit(tmp, path)
