"""Figure 1's numbers from training curves: the lr criterion, spreads over seeds, ratios at
fixed levels and the common level; and the protocol's defaults. Pure functions of lists of
per-epoch training errors (no torch), so each rule is tested on curves with known answers.

A curve is a list of training errors, one per epoch (index 0 = epoch 1). "Epochs to a level"
is the first 1-based epoch whose error is at or below it, as the paper reads Figure 1.
"""

from __future__ import annotations

import math
from statistics import mean

TARGET = 0.25  # the paper's threshold: "reaches a 25% training error rate"
# Levels fixed before any run, at which epochs and ratios are read: where 25 % is not reached
# by both nets, the ratio at 0.30 ... 0.50 still is (and how it changes with the level shows)
LEVELS = (0.50, 0.45, 0.40, 0.35, 0.30, TARGET)
LATE = 0.75  # a crossing after this share of a run may be a dip on a plateau: not a common level
NEAR_END = 0.02  # a level this close to where a net's curve ends is flagged: a first dip, not a pace
END_EPOCHS = 5  # "where a curve ends": its seed mean over this many last epochs
PAPER_RATIO = 6.0  # "six times faster"
MAX_GRID_STEP = math.sqrt(10)  # the lr grid's largest allowed ratio between neighbours
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


def decided_by(points: list[dict], budget: int) -> str:
    """How `choose` decided, in words for fig1.md: by the criterion (25 % first), by a tie on it,
    or by the fallback because no usable lr reached 25 % within the budget."""
    ok = [p for p in points if p["flag"] is None]
    if not ok:
        return "every point flagged"
    ranks = sorted(sweep_rank(p["train_error"], budget)[0] for p in ok)
    if math.isinf(ranks[0]):
        return f"no lr reached 25 % within {budget} epochs: the lowest error at epoch {budget}"
    if len(ranks) > 1 and ranks[1] == ranks[0]:
        return f"a tie at 25 % (epoch {ranks[0]}), broken by the error at epoch {budget}"
    return f"25 % first (epoch {ranks[0]})"


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
        "min_bound": ">" if slow["seeds"] and not slow["reached"] else "=",  # no slow seed got there
    }


def level_key(level: float) -> str:
    """A level as a JSON key: "0.25"."""
    return f"{level:.2f}"


def epochs_to_levels(curves: list[list[float]], ran: int) -> dict[str, dict]:
    """Epochs to each of LEVELS over seeds (`spread`), keyed by `level_key`."""
    return {level_key(lv): spread([epochs_to(c, lv) for c in curves], ran) for lv in LEVELS}


def seed_mean(curves: list[list[float]]) -> list[float]:
    """The mean curve over seeds, as long as the shortest."""
    n = min(len(c) for c in curves)
    return [mean(c[e] for c in curves) for e in range(n)]


def end_error(curves: list[list[float]]) -> float | None:
    """Where a net's curve ends up: the seed-mean error over its last END_EPOCHS epochs."""
    if not curves or not min(len(c) for c in curves):
        return None
    return mean(seed_mean(curves)[-END_EPOCHS:])


def common_level(fast: list[list[float]], slow: list[list[float]], ran: int) -> dict | None:
    """The ratio at the lowest of LEVELS that both nets pass through on their way down.

    A level counts when every seed of both nets starts above it (epoch 1's error: else there is
    no crossing to time) and reaches it within the first LATE of its `ran` epochs (a crossing
    late in a run may be a dip on a plateau, where the first epoch at a level is a draw, not a
    pace). The levels are fixed in advance, so the answer does not move with how long the runs
    are or where a plateau's minimum happens to fall. Epochs and ratio as at any level: each
    seed's first epoch at the level, the ratio of the seed means, its range over seeds.
    """
    curves = fast + slow
    if not fast or not slow or not all(curves):
        return None
    for level in sorted(LEVELS):
        if any(c[0] <= level for c in curves):
            continue
        f, s = (spread([epochs_to(c, level) for c in cs], ran) for cs in (fast, slow))
        if f["bound"] == s["bound"] == "=" and max(f["max"], s["max"]) <= LATE * ran:
            r = ratio(s, f)
            return {"level": level, "fast": f["mean"], "slow": s["mean"], **r}
    return None
