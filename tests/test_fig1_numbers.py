"""Figure 1's rules on curves with known answers: the lr criterion and how it decided, flags,
the grid, spreads and ratios over seeds at fixed levels, and a common level that is not read on
a plateau."""

from __future__ import annotations

import math

import pytest

from trainer import fig1_report
from trainer import fig1_stats as stats
from trainer.ablations import PAIRS, Plan, net_result, ratios, summarise
from trainer.fig1_report import common_text, figure, ratio_text, spread_text
from trainer.figures import pyplot


def _point(lr: float, curve: list[float], flag: str | None = None) -> dict:
    return {"lr": lr, "train_error": curve, "flag": flag}


def test_the_lr_that_reaches_25_percent_soonest_wins_not_the_best_first_epoch():
    starts_fast = _point(0.03, [0.60, 0.45, 0.42, 0.41, 0.40, 0.40])  # best after one epoch
    keeps_going = _point(0.01, [0.63, 0.45, 0.33, 0.27, 0.24, 0.22])  # first to 25 % (epoch 5)
    also_there = _point(0.003, [0.70, 0.50, 0.35, 0.28, 0.26, 0.20])  # lowest at the end, epoch 6
    assert stats.choose([starts_fast, keeps_going, also_there], budget=6) == 0.01
    assert stats.decided_by([starts_fast, keeps_going, also_there], 6) == "25 % first (epoch 5)"
    # none reaches 25 % within the budget: the lowest error at the budget's end, not the first epoch
    assert stats.choose([starts_fast, keeps_going, also_there], budget=4) == 0.01
    assert stats.sweep_rank(also_there["train_error"], 4) == (math.inf, 0.28)
    assert stats.decided_by([starts_fast, keeps_going], 4).startswith("no lr reached 25 % within 4")
    # a tie on the epoch goes to the lower error at the budget's end
    tie = _point(0.0316, [0.6, 0.4, 0.3, 0.3, 0.24, 0.21])
    assert stats.choose([keeps_going, tie], budget=6) == 0.0316
    assert stats.decided_by([keeps_going, tie], 6).startswith("a tie at 25 % (epoch 5)")
    # a flagged point never wins, however good its numbers; all flagged: no lr
    assert stats.choose([{**tie, "flag": "diverged"}, keeps_going], budget=6) == 0.01
    assert stats.choose([{**keeps_going, "flag": "at chance"}], budget=6) is None


def test_sweep_points_that_diverged_or_stayed_at_chance_are_flagged():
    assert stats.flag([2.3, math.nan], [0.9, 0.9], num_classes=10) == "diverged"
    assert stats.flag([2.3, math.inf], [0.5, 0.4], num_classes=10) == "diverged"
    assert stats.flag([2.30, 2.30], [0.90, 0.895], num_classes=10) == "at chance"  # 1 - 1/10 - 0.01
    assert stats.flag([2.30, 2.20], [0.90, 0.88], num_classes=10) is None
    assert stats.flag([1.1, 1.09], [0.67, 0.66], num_classes=3) == "at chance"


def test_the_grid_steps_by_at_most_sqrt_10_and_extends_on_its_own_spacing():
    stats.check_grid([0.001, 0.00316, 0.01, 0.0316])
    stats.check_grid([0.01])  # one lr: no sweep
    with pytest.raises(ValueError, match=r"0.003 -> 0.01 is a step of 3.33x"):
        stats.check_grid([0.001, 0.003, 0.01])  # the old 3x-and-3.33x grid
    with pytest.raises(ValueError, match=r"must be in \(0, 10\)"):
        stats.check_grid([0.01, -1])
    half = [0.001, 0.00316, 0.01, 0.0316]
    assert stats.beyond(half, up=True) == 0.1 and stats.beyond(half, up=False) == 0.000316
    assert stats.beyond([0.01, 0.02, 0.04], up=True) == 0.08  # a 2x grid stays 2x
    assert stats.beyond([0.01], up=False) == 0.00316


def test_spread_and_ratio_over_seeds_with_their_bounds():
    relu = stats.spread([6, 7, 9], ran=40)
    assert (relu["mean"], relu["min"], relu["max"], relu["bound"]) == (pytest.approx(22 / 3), 6, 9, "=")
    tanh = stats.spread([30, None, 36], ran=40)  # one seed not there in 40 epochs
    assert (tanh["mean"], tanh["max"], tanh["bound"], tanh["reached"]) == (pytest.approx(106 / 3), 40, ">", 2)
    r = stats.ratio(tanh, relu)
    assert r == {
        "ratio": pytest.approx(106 / 22),
        "min": 30 / 9,
        "max": 40 / 6,
        "bound": ">",
        "min_bound": "=",
    }
    assert ratio_text(r) == "> 4.82 (range 3.33-> 6.67)"
    never = stats.ratio(stats.spread([None, None, None], ran=40), relu)  # 40 is a bound at both ends
    assert ratio_text(never) == "> 5.45 (range > 4.44 to > 6.67)"
    assert spread_text(tanh) == "> 35.3 (30 to > 40; 2 of 3 seeds)"
    assert (
        spread_text(relu) == "7.3 (6-9)"
        and spread_text(stats.spread([None] * 3, 40)) == "> 40 (no seed of 3)"
    )
    # the fast net not there in every seed: no ratio (both sides unknown), and the table says why
    assert stats.ratio(relu, tanh) is None
    assert ratio_text(None, tanh) == "undetermined (fast net: 2 of 3 seeds)"


def test_the_common_level_is_the_lowest_fixed_level_both_reach_before_a_plateau():
    fast = [[0.55, 0.39, 0.33, 0.30, 0.28, 0.27, 0.26, 0.25, 0.25, 0.25]] * 2
    # the slow net falls, then wanders on a plateau whose minimum comes last (epoch 10)
    slow = [
        [0.60, 0.52, 0.47, 0.44, 0.42, 0.41, 0.41, 0.42, 0.41, 0.40],
        [0.62, 0.53, 0.48, 0.45, 0.43, 0.41, 0.42, 0.41, 0.41, 0.40],
    ]
    c = stats.common_level(fast, slow, ran=10)
    # 0.40 is reached only at epoch 10 (the plateau's dip): too late; 0.45 at epochs 4 and 4
    assert c["level"] == 0.45 and (c["slow"], c["fast"]) == (4, 2) and c["ratio"] == 2.0
    assert (c["min"], c["max"]) == (2.0, 2.0) and common_text(c).startswith("2.00 at 0.45 (4.0 / 2.0 epochs")
    # the ratio is of the seeds' own crossings, so it lies in its range (a curve of seed means
    # could cross where no seed does)
    a = [0.6, 0.5, 0.4, 0.4, 0.4, 0.46, 0.46, 0.46, 0.46, 0.46, 0.46, 0.46]
    b = [0.6, 0.55, 0.52, 0.5, 0.48, 0.46, 0.44, 0.42, 0.4, 0.4, 0.39, 0.39]
    quick = [[0.6, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]] * 3
    c = stats.common_level(quick, [a, b, b], ran=12)
    assert c["level"] == 0.40 and c["ratio"] == pytest.approx((3 + 9 + 9) / 3 / 2)
    assert c["min"] <= c["ratio"] <= c["max"] and (c["min"], c["max"]) == (1.5, 4.5)
    # a level some seed starts at or below has no crossing to time: never the common level
    assert stats.common_level([[0.5, 0.45, 0.44, 0.44]], [[0.6, 0.61, 0.62, 0.6]], ran=4) is None
    # the ratio at a fixed level does not move with the runs' length (nor does a floor)
    longer = [c + [c[-1]] * 30 for c in slow]
    same = stats.epochs_to_levels(slow, 10)["0.45"], stats.epochs_to_levels(longer, 40)["0.45"]
    assert same[0]["per_seed"] == same[1]["per_seed"] == [4, 4]


def test_each_pair_gets_its_ratios_and_the_control_is_one_of_them():
    def runs(*curves: list[float]) -> list[dict]:
        return [{"seed": s, "train_error": c, "test_error": [None] * len(c)} for s, c in enumerate(curves, 1)]

    down = [0.6, 0.45, 0.3, 0.24, 0.2]
    slow = [0.7, 0.6, 0.5, 0.45, 0.4]
    nets = {
        "relu-lrn": net_result(0.01, runs(down, down), 5),
        "relu": net_result(0.00316, runs(slow, slow), 5),
        "relu-scale": net_result(0.01, runs(slow, down), 5),
    }
    r = ratios(nets, 5)
    # no tanh runs: no tanh pair; the control against LRN and against no LRN
    assert set(r) == {"relu_over_relu_lrn", "relu_scale_over_relu_lrn", "relu_over_relu_scale"}
    assert r["relu_over_relu_lrn"]["at"]["0.25"] == {
        "ratio": 5 / 4,
        "min": 5 / 4,
        "max": 5 / 4,
        "bound": ">",
        "min_bound": ">",
    }
    control = r["relu_scale_over_relu_lrn"]
    assert control["at"]["0.25"] == {
        "ratio": 4.5 / 4,
        "min": 1.0,
        "max": 5 / 4,
        "bound": ">",
        "min_bound": "=",
    }
    assert control["at"]["0.50"] == {
        "ratio": 2.5 / 2,
        "min": 1.0,
        "max": 3 / 2,
        "bound": "=",
        "min_bound": "=",
    }
    assert control["question"] == dict((k, q) for _, _, k, q in PAIRS)["relu_scale_over_relu_lrn"]
    assert r["relu_over_relu_scale"]["at"]["0.25"] is None  # relu-scale: 1 of 2 seeds got there
    assert nets["relu"]["end_error"] == pytest.approx(0.53) and nets["relu"]["diverged_seeds"] == []


def test_the_curves_have_seed_bands_and_markers_only_on_short_runs():
    def net(epochs: int, seeds: int) -> dict:
        runs = [
            {"seed": s, "train_error": [0.9 - 0.01 * e - 0.02 * s for e in range(epochs)]}
            for s in range(seeds)
        ]
        return {"lr": 0.01, "runs": runs}

    gone = {"seed": 9, "train_error": [0.9], "diverged": True}  # stopped in epoch 2: not in the band
    relu = net(3, 3)
    summary = {"nets": {"relu": {**relu, "runs": [*relu["runs"], gone]}, "tanh": net(40, 1)}}
    summary["conditions"] = {"init": "paper"}
    fig = figure(summary)
    relu, tanh = fig.axes[0].lines[:2]
    assert relu.get_marker() == "o" and tanh.get_marker() == "None"  # 3 epochs: marked; 40: a line
    assert list(relu.get_ydata()) == pytest.approx([0.88, 0.87, 0.86])  # the mean of seeds 0-2
    (band,) = fig.axes[0].collections  # only the net with several seeds has a band
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(0.84)  # down to the best seed
    pyplot().close(fig)


def test_a_partial_summary_says_how_far_the_run_got():
    """Published after each net's sweep and each seed round: hours in, it must say it is partial."""
    curve = [0.6 - 0.03 * e for e in range(10)]
    point = {"lr": 0.001, "train_error": curve, "epochs_to_25pct": None, "final_train_error": curve[-1]}
    swept = {"relu": {"points": [{**point, "flag": None}], "chosen_lr": 0.001, "at_grid_end": False}}
    swept["relu"]["decided_by"] = stats.decided_by(swept["relu"]["points"], 10)
    plan = Plan(nets=("relu", "tanh"))
    summary = summarise(plan, swept, {"relu": 0.001}, {}, complete=False)
    assert fig1_report.lines(summary)[-1] == "(partial: 1 of 2 nets swept, 0 of 6 final runs)"
    assert "Partial: 1 of 2 nets swept, 0 of 6 final runs: not the settled" in fig1_report.markdown(summary)
    assert "no lr reached 25 % within 10 epochs" in fig1_report.markdown(summary)
    assert "(no final runs)" in fig1_report.markdown(summary) and "| ratio |" not in fig1_report.markdown(
        summary
    )


def test_a_diverged_seed_is_left_out_of_the_last_epochs_test_error_as_of_the_end_error():
    """fig1.md's row of a net reads one set of seeds: a seed that diverged stopped early, so its
    last finished epoch is no more its end for the test error than for the training error."""
    fine = {"seed": 1, "train_error": [0.6, 0.4], "test_error": [0.62, 0.5]}
    gone = {"seed": 2, "train_error": [0.6], "test_error": [0.9], "diverged": True}
    plan = Plan(nets=("relu",), epochs=2, seeds=2)
    summary = summarise(plan, {}, {"relu": 0.01}, {"relu": [fine, gone]}, complete=True)
    row = next(line for line in fig1_report.markdown(summary).splitlines() if line.startswith("| relu |"))
    assert row.endswith("| 0.500 | 0.500 (0.500-0.500) |"), row  # seed 2: 0.9 at its last
