"""Figure 1's summary (trainer.ablations) as text: the lines `alextrain fig1` prints, the
Markdown tables of fig1.md (quoted in docs/figures.md), and the curves with seed bands."""

from __future__ import annotations

from pathlib import Path

from trainer import fig1_stats as stats
from trainer.figures import pyplot, save_figure

INIT_NOTE = {
    "paper": "every layer N(0, 0.01^2), section 5",
    "cuda-convnet": "conv1 N(0, 1e-4^2), the rest N(0, 0.01^2): cuda-convnet's layers-18pct",
}
STYLES = {"relu": "-", "tanh": "--", "relu-lrn": ":", "tanh-lrn": "-.", "relu-scale": "-", "tanh-scale": "--"}
MARKERS_UP_TO = 15  # epochs: a shorter curve gets a marker per epoch


def require_matplotlib() -> None:
    """FigureError (one line naming the extra) when matplotlib is missing: fig1 checks this
    before it trains for hours, not when it plots."""
    pyplot()


def spread_text(s: dict) -> str:
    """ "7.3 (6-9)" or, when a seed never got there, "> 38.7 (34 to > 40; 2 of 3 seeds)"."""
    if not s["seeds"]:
        return "-"
    if s["bound"] == "=":
        return f"{s['mean']:.1f} ({s['min']}-{s['max']})" if s["min"] != s["max"] else f"{s['mean']:.1f}"
    if not s["reached"]:
        return f"> {s['max']} (no seed of {s['seeds']})"
    return f"> {s['mean']:.1f} ({s['min']} to > {s['max']}; {s['reached']} of {s['seeds']} seeds)"


def ratio_text(r: dict | None) -> str:
    if not r:
        return "-"
    gt = "> " if r["bound"] == ">" else ""
    return f"{gt}{r['ratio']:.2f} (range {r['min']:.2f}-{gt}{r['max']:.2f})"


def common_text(c: dict | None) -> str:
    if not c:
        return "-"
    span = ""
    if c["range"]:
        gt = "> " if c["range_bound"] == ">" else ""
        span = f", range {c['range'][0]:.2f}-{gt}{c['range'][1]:.2f}"
    return f"{c['ratio']:.2f} at {c['level']:.3f} ({c['slow']} / {c['fast']} epochs{span})"


def _point_text(p: dict, budget: int) -> str:
    to = p["epochs_to_25pct"] or f"> {budget}"
    return f"{p['lr']:g}: " + (
        p["flag"].upper() if p["flag"] else f"{to} ep, err {p['final_train_error']:.3f}"
    )


def lines(summary: dict) -> list[str]:
    """What `alextrain fig1` prints at the end: each sweep, each net over seeds, each ratio."""
    proto = summary["protocol"]
    out = []
    for net, s in summary["sweep"].items():
        points = "; ".join(_point_text(p, proto["budget_epochs"]) for p in s["points"])
        chosen = "none" if s["chosen_lr"] is None else f"{s['chosen_lr']:g}"
        out.append(
            f"sweep {net} (epochs to 25 % within {proto['budget_epochs']}, seed 0): {points} -> lr {chosen}"
        )
    for net, r in summary["nets"].items():
        out.append(
            f"{net:<10} lr {r['lr']:g}, seeds {','.join(str(x['seed']) for x in r['runs'])}: "
            f"epochs to 25 % train err {spread_text(r['epochs_to_25pct'])}; "
            f"to 50 % {spread_text(r['epochs_to_50pct'])}"
        )
    for r in summary["ratios"].values():
        out.append(
            f"{r['slow']} / {r['fast']} ({r['question']}): at 25 % {ratio_text(r['at_25pct'])}; "
            f"at 50 % {ratio_text(r['at_50pct'])}; common level {common_text(r['at_common_level'])}"
        )
    out.append(f"paper, at 25 %: about {summary['paper_ratio_at_25pct']:g}")
    if not summary["complete"]:
        out.append("(partial: not every seed has run yet)")
    return out


def _last(runs: list[dict], key: str) -> str:
    vals = [r[key][-1] for r in runs if r[key] and r[key][-1] is not None]
    if not vals:
        return "-"
    return f"{sum(vals) / len(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"


def markdown(summary: dict) -> str:
    """fig1.md: protocol, each sweep, the nets over seeds, the ratios."""
    proto, init = summary["protocol"], summary["conditions"]["init"]
    budget = proto["budget_epochs"]
    lines_ = [
        f"Weights: {init} init ({INIT_NOTE[init]}). No weight decay, dropout, mirror or lighting; "
        "a fixed lr per net.",
        "",
        f"lr criterion: {proto['criterion']} (budget {proto['budget_epochs']} epochs, seed "
        f"{proto['sweep_seed']}; grid {', '.join(f'{x:g}' for x in proto['grid'])}, steps of at most "
        f"sqrt(10), extended past an end that wins). Final runs: seeds "
        f"{', '.join(map(str, proto['seeds']))} ({proto['epochs']} epochs each"
        + (f", {proto['steps_per_epoch']} steps per epoch" if proto["steps_per_epoch"] else "")
        + ").",
        "",
    ]
    for net, s in summary["sweep"].items():
        lines_ += [
            f"Sweep, {net}:",
            "",
            f"| lr | epochs to 25 % (of {budget}) | train err, epoch {budget} | |",
            "|---:|---:|---:|---|",
        ]
        for p in s["points"]:
            mark = p["flag"] or ("**chosen**" if p["lr"] == s["chosen_lr"] else "")
            to = p["epochs_to_25pct"] or f"> {len(p['train_error'])}"
            lines_.append(f"| {p['lr']:g} | {to} | {p['final_train_error']:.3f} | {mark} |")
        lines_.append("")
    lines_ += [
        "| net | lr | seeds | epochs to 25 % train err, mean (range) | to 50 % | "
        "train err, last epoch | test err, last epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for net, r in summary["nets"].items():
        lines_.append(
            f"| {net} | {r['lr']:g} | {len(r['runs'])} | {spread_text(r['epochs_to_25pct'])} | "
            f"{spread_text(r['epochs_to_50pct'])} | {_last(r['runs'], 'train_error')} | "
            f"{_last(r['runs'], 'test_error')} |"
        )
    lines_ += [
        "",
        "| ratio | question | at 25 % | at 50 % | at the common level |",
        "|---|---|---:|---:|---:|",
    ]
    for r in summary["ratios"].values():
        lines_.append(
            f"| {r['slow']} / {r['fast']} | {r['question']} | {ratio_text(r['at_25pct'])} | "
            f"{ratio_text(r['at_50pct'])} | {common_text(r['at_common_level'])} |"
        )
    cl = proto["common_level"]
    lines_ += [
        "",
        f"Common level: {cl['margin']:g} above the higher of the two nets' floors (the minimum of "
        f"each seed-mean curve, smoothed by a centred mean over {cl['smooth_epochs']} epochs), read "
        "where each smoothed curve first reaches it, not at a plateau's minimum. Ranges: over "
        'seeds (min slow / max fast to max slow / min fast); "> ": a seed did not get there within '
        "its epochs.",
        f"Paper, at 25 %: about {summary['paper_ratio_at_25pct']:g}.",
    ]
    if not summary["complete"]:
        lines_.append("Partial: not every seed has run yet.")
    return "\n".join(lines_) + "\n"


def plot(summary: dict, path: Path) -> None:
    save_figure(figure(summary), path)


def figure(summary: dict):  # noqa: ANN201 (a matplotlib Figure; matplotlib is imported lazily)
    """Each net's seed-mean training error, with a band from its lowest to its highest seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (net, r) in enumerate(summary["nets"].items()):
        curves = [x["train_error"] for x in r["runs"]]
        mean = stats.seed_mean(curves)
        n = len(mean)
        xs = range(1, n + 1)
        colour = f"C{i}"
        ax.plot(
            xs,
            mean,
            STYLES.get(net, "-"),
            color=colour,
            marker="o" if n <= MARKERS_UP_TO else None,
            markersize=3,
            label=f"{net} (lr {r['lr']:g}, {len(curves)} seeds)",
        )
        if len(curves) > 1:
            low = [min(c[e] for c in curves) for e in range(n)]
            high = [max(c[e] for c in curves) for e in range(n)]
            ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)
    ax.axhline(stats.TARGET, color="grey", lw=0.8)
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error rate")
    ax.set_ylim(0, 1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    init = summary["conditions"]["init"]
    ax.set_title(f"Figure 1: CIFAR-10, four-layer CNN, no regularisation, {init} init", fontsize=10)
    if summary["nets"]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
