"""Figure 1's numbers from training curves: the lr criterion, spreads over seeds, ratios and
the common level; and the protocol's defaults. Pure functions of lists of per-epoch training
errors (no torch), so each rule is tested on curves with known answers.

A curve is a list of training errors, one per epoch (index 0 = epoch 1). "Epochs to a level"
is the first 1-based epoch whose error is at or below it, as the paper reads Figure 1.
"""

from __future__ import annotations

import math
from statistics import mean

TARGET = 0.25  # the paper's threshold: "reaches a 25% training error rate"
SECOND_TARGET = 0.50  # reached early by every net: a ratio where 25 % is not reached
PAPER_RATIO = 6.0  # "six times faster"
MAX_GRID_STEP = math.sqrt(10)  # the lr grid's largest allowed ratio between neighbours
SMOOTH_EPOCHS = 3  # the common level reads a trailing mean over this many epochs
COMMON_MARGIN = 0.02  # the common level sits this far above the higher of the two floors
CHANCE_MARGIN = 0.01  # a sweep point this close to chance error (or above) has not learned
# The protocol's defaults (here, torch-free, so that `alextrain fig1 --help` shows them at once)
DEFAULT_NETS = ("relu", "tanh", "relu-lrn", "tanh-lrn", "relu-scale")
GRID = (0.001, 0.00316, 0.01, 0.0316)  # half-decades: each step sqrt(10)
BUDGET_EPOCHS = 10  # per sweep point
EPOCHS = 40  # per final run
SEEDS = 3


def epochs_to(curve: list[float], level: float) -> int | None:
    """The first epoch (1-based) whose training error is at or below `level`; None if none."""
    return next((e + 1 for e, err in enumerate(curve) if err <= level), None)


def sweep_rank(curve: list[float], budget: int) -> tuple[float, float]:
    """The caption's criterion, as a sort key (lower is better) over the first `budget` epochs:
    the lr that reaches TARGET soonest; among those that tie, or when none reaches it, the lowest
    training error at the budget's end. Not the best first epoch: that picks the lr that starts
    fastest, which for tanh is not the fastest to 25 % (docs/figures.md)."""
    seen = curve[:budget]
    reached = epochs_to(seen, TARGET)
    return (reached if reached is not None else math.inf, seen[-1])


def flag(losses: list[float], curve: list[float], num_classes: int) -> str | None:
    """Why a sweep point cannot be chosen: "diverged" (a non-finite loss), "at chance" (its
    training error at the end within CHANCE_MARGIN of 1 - 1/classes, or above), else None."""
    if not all(math.isfinite(x) for x in [*losses, *curve]):
        return "diverged"
    if curve[-1] >= 1 - 1 / num_classes - CHANCE_MARGIN:
        return "at chance"
    return None


def choose(points: list[dict], budget: int) -> float | None:
    """The lr of the best unflagged point ({"lr", "train_error", "flag"}), by `sweep_rank`;
    None when every point is flagged. Ties on both keys go to the lower lr (the safer one)."""
    ok = [p for p in points if p["flag"] is None]
    if not ok:
        return None
    return min(ok, key=lambda p: (*sweep_rank(p["train_error"], budget), p["lr"]))["lr"]


def check_grid(lrs: list[float]) -> None:
    """ValueError unless the grid is >= 2 distinct rates with neighbours at most sqrt(10) apart
    (one value is allowed: no sweep)."""
    grid = sorted(set(lrs))
    if any(not (0 < r < 10) for r in grid):
        raise ValueError(f"each learning rate must be in (0, 10), got {lrs}")
    wide = [(a, b) for a, b in zip(grid, grid[1:], strict=False) if b / a > MAX_GRID_STEP * 1.01]
    if wide:
        a, b = wide[0]
        raise ValueError(
            f"{a:g} -> {b:g} is a step of {b / a:.2f}x; the grid steps by at most sqrt(10) = 3.16x"
        )


def beyond(grid: list[float], up: bool) -> float:
    """The next lr past an end of the sorted `grid`, one step of the grid's own spacing there
    (capped at sqrt(10)); a half-decade grid (1e-3, 3.16e-3, ...) stays on half-decades."""
    b = grid[-1] if up else grid[0]
    neighbour = (grid[-2] if up else grid[1]) if len(grid) > 1 else None
    step = min(max(b / neighbour, neighbour / b), MAX_GRID_STEP) if neighbour else MAX_GRID_STEP
    x = math.log10(b) + (1 if up else -1) * math.log10(step)
    half = round(2 * x) / 2
    return float(f"{10 ** (half if abs(x - half) < 0.005 else x):.3g}")


def spread(values: list[int | None], ran: int) -> dict:
    """Epochs to a level over seeds: mean, min, max; a seed that never got there within `ran`
    epochs counts as `ran` and makes the mean and max lower bounds ("bound": ">")."""
    got = [v for v in values if v is not None]
    filled = [v if v is not None else ran for v in values]
    return {
        "per_seed": values,
        "reached": len(got),
        "seeds": len(values),
        "mean": mean(filled) if filled else None,
        "min": min(filled) if filled else None,
        "max": max(filled) if filled else None,
        "bound": "=" if len(got) == len(values) else ">",
    }


def ratio(slow: dict, fast: dict) -> dict | None:
    """slow / fast epochs (two `spread`s): the ratio of the means and its range over seeds
    (min slow / max fast .. max slow / min fast). Defined when every seed of the fast net got
    there; when some of the slow net's did not, the ratio and its top are lower bounds."""
    if not fast["seeds"] or fast["bound"] != "=" or not slow["seeds"]:
        return None
    return {
        "ratio": slow["mean"] / fast["mean"],
        "min": slow["min"] / fast["max"],
        "max": slow["max"] / fast["min"],
        "bound": slow["bound"],
    }


def smooth(curve: list[float], window: int = SMOOTH_EPOCHS) -> list[float]:
    """Centred mean over `window` epochs (fewer at the ends): a plateau's wander averages out,
    and unlike a trailing mean it does not lag a steep fall (which would bias the faster net)."""
    half = window // 2
    return [mean(curve[max(0, e - half) : e + half + 1]) for e in range(len(curve))]


def seed_mean(curves: list[list[float]]) -> list[float]:
    """The mean curve over seeds, as long as the shortest."""
    n = min(len(c) for c in curves)
    return [mean(c[e] for c in curves) for e in range(n)]


def common_level(fast: list[list[float]], slow: list[list[float]]) -> dict | None:
    """The ratio at a level both nets reach, read where both are still falling.

    Each net's seed-mean curve is smoothed (`smooth`); its floor is that curve's minimum. The
    level is COMMON_MARGIN above the higher floor, so neither net is read at the arg-min of its
    plateau (where a flat, noisy curve makes "the first epoch at its minimum" arbitrary). Epochs
    to it: the first epoch each smoothed curve is at or below it; the range comes from each
    seed's own smoothed curve (a seed that never gets there counts as its length: ">").
    """
    if not fast or not slow:
        return None
    smoothed = {k: smooth(seed_mean(c)) for k, c in (("fast", fast), ("slow", slow))}
    level = max(min(s) for s in smoothed.values()) + COMMON_MARGIN
    at = {k: epochs_to(s, level) for k, s in smoothed.items()}
    if at["fast"] is None or at["slow"] is None:
        return None  # the level is above a curve's start: nothing to compare
    per = {
        k: spread([epochs_to(smooth(c), level) for c in curves], min(len(c) for c in curves))
        for k, curves in (("fast", fast), ("slow", slow))
    }
    r = ratio(per["slow"], per["fast"])
    return {
        "level": level,
        "fast": at["fast"],
        "slow": at["slow"],
        "ratio": at["slow"] / at["fast"],
        "range": [r["min"], r["max"]] if r else None,
        "range_bound": r["bound"] if r else None,
    }
