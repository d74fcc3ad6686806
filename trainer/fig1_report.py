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


def ratio_text(r: dict | None, fast: dict | None = None) -> str:
    """ "6.15 (range 4.50-8.00)"; lower bounds with "> "; with the fast net's spread, why there
    is no ratio: "undetermined (fast net: 2 of 3 seeds)"."""
    if not r:
        if fast and fast["seeds"] and fast["bound"] == ">":
            return f"undetermined (fast net: {fast['reached']} of {fast['seeds']} seeds)"
        return "-"
    gt = "> " if r["bound"] == ">" else ""
    if r.get("min_bound") == ">":  # no seed of the slow net got there: the range is bounds too
        return f"> {r['ratio']:.2f} (range > {r['min']:.2f} to > {r['max']:.2f})"
    return f"{gt}{r['ratio']:.2f} (range {r['min']:.2f}-{gt}{r['max']:.2f})"


def common_text(c: dict | None) -> str:
    if not c:
        return "none of the levels"
    return (
        f"{c['ratio']:.2f} at {c['level']:.2f} ({c['slow']:.1f} / {c['fast']:.1f} epochs, "
        f"range {c['min']:.2f}-{c['max']:.2f})"
    )


def near_end(net: dict, level: float = stats.TARGET) -> bool:
    """A level within NEAR_END of where the net's curve ends: its first epoch there is a dip."""
    return net["end_error"] is not None and abs(net["end_error"] - level) <= stats.NEAR_END


def _runs_text(r: dict) -> str:
    seeds = ",".join(str(x["seed"]) for x in r["runs"])
    return seeds + (f" (diverged: {','.join(map(str, r['diverged_seeds']))})" if r["diverged_seeds"] else "")


def _point_text(p: dict, budget: int) -> str:
    to = p["epochs_to_25pct"] or f"> {budget}"
    return f"{p['lr']:g}: " + (
        p["flag"].upper() if p["flag"] else f"{to} ep, err {p['final_train_error']:.3f}"
    )


def lines(summary: dict) -> list[str]:
    """What `alextrain fig1` prints at the end: each sweep, each net over seeds, each ratio."""
    proto = summary["protocol"]
    target, half = stats.level_key(stats.TARGET), stats.level_key(0.5)
    out = []
    for net, s in summary["sweep"].items():
        points = "; ".join(_point_text(p, proto["budget_epochs"]) for p in s["points"])
        chosen = "none" if s["chosen_lr"] is None else f"{s['chosen_lr']:g}"
        out.append(
            f"sweep {net} (epochs to 25 % within {proto['budget_epochs']}, seed 0): {points} -> lr {chosen}"
            f" ({s['decided_by']}{'; at the grid end' if s['at_grid_end'] else ''})"
        )
    for net, r in summary["nets"].items():
        out.append(
            f"{net:<10} lr {r['lr']:g}, seeds {_runs_text(r)}: epochs to 25 % train err "
            f"{spread_text(r['epochs_to'][target])}{' (near where it ends)' if near_end(r) else ''}; "
            f"to 50 % {spread_text(r['epochs_to'][half])}"
        )
    for r in summary["ratios"].values():
        fast = summary["nets"][r["fast"]]["epochs_to"]
        out.append(
            f"{r['slow']} / {r['fast']} ({r['question']}): "
            f"at 25 % {ratio_text(r['at'][target], fast[target])}; "
            f"at 50 % {ratio_text(r['at'][half], fast[half])}; common level {common_text(r['common_level'])}"
        )
    out.append(f"paper, at 25 %: about {summary['paper_ratio_at_25pct']:g}")
    if not summary["complete"]:
        out.append(f"({partial(summary)})")
    return out


def partial(summary: dict) -> str:
    """How far an unfinished run is: "partial: 2 of 5 nets swept, 0 of 15 final runs"."""
    proto = summary["protocol"]
    planned = proto["nets"]
    done = sum(len(r["runs"]) for r in summary["nets"].values())
    swept = f"{len(summary['sweep'])} of {len(planned)} nets swept, " if len(set(proto["grid"])) > 1 else ""
    return f"partial: {swept}{done} of {len(planned) * len(proto['seeds'])} final runs"


def _last(runs: list[dict], key: str) -> str:
    # a diverged seed's last epoch is not where it ended (as for the end error and the band)
    vals = [r[key][-1] for r in runs if r[key] and r[key][-1] is not None and not r.get("diverged")]
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
            if p["flag"] == "diverged":  # its curve holds the epochs it finished
                to, err = "-", f"- (in epoch {len(p['train_error']) + 1})"
            else:
                err = f"{p['final_train_error']:.3f}"
            lines_.append(f"| {p['lr']:g} | {to} | {err} | {mark} |")
        edge = "; the best lr is still at the grid's end after extending it" if s["at_grid_end"] else ""
        lines_ += ["", f"Chosen by: {s['decided_by']}{edge}.", ""]
    levels = proto["levels"]
    heads = " | ".join(f"{lv * 100:g} %" for lv in levels)
    lines_ += ["Epochs to each training error, mean over seeds (range):", ""]
    lines_ += (
        [
            f"| net | lr | seeds | {heads} | train err, last {proto['end_epochs']} epochs | "
            "test err, last epoch |",
            "|---|---:|---:|" + "---:|" * (len(levels) + 2),
        ]
        if summary["nets"]
        else ["(no final runs)"]
    )
    for net, r in summary["nets"].items():
        cells = " | ".join(spread_text(r["epochs_to"][stats.level_key(lv)]) for lv in levels)
        end = "-" if r["end_error"] is None else f"{r['end_error']:.3f}"
        lines_.append(
            f"| {net} | {r['lr']:g} | {_runs_text(r)} | {cells} | {end} | {_last(r['runs'], 'test_error')} |"
        )
    lines_ += ["", "Ratios of epochs (slow / fast), of the seed means, with their range over seeds:", ""]
    lines_ += (
        [
            f"| ratio | question | {heads} | at the common level |",
            "|---|---|" + "---:|" * (len(levels) + 1),
        ]
        if summary["ratios"]
        else ["(none: a ratio needs final runs of both its nets)"]
    )
    for r in summary["ratios"].values():
        fast = summary["nets"][r["fast"]]["epochs_to"]
        cells = " | ".join(ratio_text(r["at"][k], fast[k]) for k in map(stats.level_key, levels))
        lines_.append(
            f"| {r['slow']} / {r['fast']} | {r['question']} | {cells} | {common_text(r['common_level'])} |"
        )
    close = [n for n, r in summary["nets"].items() if near_end(r)]
    late = proto["common_level"]["late"]
    lines_ += [
        "",
        "Epochs to a level: each seed's first epoch at or below it (the running training error over "
        'the epoch, as the paper plots it); "> ": a seed did not get there within its epochs, and a '
        "ratio needs every seed of the faster net to get there. Ranges: min slow / max fast to max "
        "slow / min fast. The common level: the lowest of the levels above that every seed of both "
        f"nets starts above and reaches within the first {late:.0%} of its epochs, so that it is not "
        "read where a curve wanders on a plateau.",
    ]
    if close:
        lines_ += [
            "",
            f"25 % lies within {proto['near_end']:g} of where {', '.join(close)} end(s) (the seed mean "
            f"of the last {proto['end_epochs']} epochs): there, epochs to 25 % are a first dip on a "
            "plateau more than a pace; the higher levels are the better measure.",
        ]
    lines_ += ["", f"Paper, at 25 %: about {summary['paper_ratio_at_25pct']:g}."]
    if not summary["complete"]:
        lines_ += ["", f"{partial(summary).capitalize()}: not the settled numbers yet."]
    return "\n".join(lines_) + "\n"


def plot(summary: dict, path: Path) -> None:
    save_figure(figure(summary), path)


def figure(summary: dict):  # noqa: ANN201 (a matplotlib Figure; matplotlib is imported lazily)
    """Each net's seed-mean training error, with a band from its lowest to its highest seed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (net, r) in enumerate(summary["nets"].items()):
        curves = [x["train_error"] for x in r["runs"] if not x.get("diverged")] or [
            x["train_error"] for x in r["runs"]
        ]  # a diverged seed's curve stops early: the band would stop with it
        if not min(map(len, curves)):
            continue
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
            label=f"{net} (lr {r['lr']:g}, {len(curves)} seed{'s' * (len(curves) != 1)})",
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
