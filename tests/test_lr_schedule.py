"""The plateau rule's drops are logged with the validation errors that triggered them."""

from __future__ import annotations

import json

import pytest

from tests.conftest import alextrain
from trainer.optim import PlateauSchedule, describe_drop


def test_a_drop_records_the_best_and_the_errors_since_it():
    s = PlateauSchedule(lr=0.01, patience=2)
    assert [s.update(e) for e in (0.50, 0.40, 0.41)] == [False, False, False]
    assert s.last_drop is None
    assert s.update(0.40)  # equal to the best is not below it: the second epoch without progress
    assert s.last_drop == {
        "lr_from": 0.01,
        "lr_to": pytest.approx(0.001),
        "best_val_err": 0.40,
        "val_errs_since_best": [0.41, 0.40],
        "patience": 2,
    }
    assert describe_drop(s.last_drop) == (
        "lr 0.01 -> 0.001: val top-1 err 0.4100, 0.4000 not below the best 0.4000 for 2 epochs"
    )
    assert not s.update(0.39) and s.since_best == []  # a new best starts the count again


def test_a_restored_schedule_drops_where_an_uninterrupted_one_does():
    errors = [0.5, 0.45, 0.46, 0.44, 0.45, 0.45, 0.45, 0.46]
    straight = PlateauSchedule(lr=0.01, patience=3)
    drops = [straight.update(e) for e in errors]
    first = PlateauSchedule(lr=0.01, patience=3)
    for e in errors[:6]:  # stopped mid-plateau (two epochs since the best), state saved
        first.update(e)
    resumed = PlateauSchedule()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint keeps it
    assert [resumed.update(e) for e in errors[6:]] == drops[6:] == [True, False]
    assert resumed.last_drop == straight.last_drop and resumed.last_drop["val_errs_since_best"] == [0.45] * 3


@pytest.mark.slow  # ~20 s on 2 cores
def test_the_metrics_row_and_the_epoch_line_say_why_the_lr_dropped(cifar_tiny, tmp_path):
    """An lr too small to change a float32 weight: the val error repeats exactly, so with
    patience 1 the plateau rule drops at the second epoch."""
    proc = alextrain(
        *("run", "--data", cifar_tiny, "--out", tmp_path, "--arch", "cifar", "--crop", 32, "--epochs", 2),
        *("--steps-per-epoch", 1, "--patience", 1, "--lr", "1e-12", "--num-threads", 2),
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not rows[0]["lr_dropped"] and "lr_drop" not in rows[0]
    drop = rows[1]["lr_drop"]
    assert rows[1]["lr_dropped"] and rows[1]["val_top1_err"] == rows[0]["val_top1_err"]
    assert drop["best_val_err"] == rows[0]["val_top1_err"]
    assert drop["val_errs_since_best"] == [rows[1]["val_top1_err"]]
    assert drop["lr_from"] == 1e-12 and drop["lr_to"] == pytest.approx(1e-13)
    assert describe_drop(drop) in proc.stdout
