"""`alextrain report`: the curves, one epoch numbering, and Table 2 only beside ImageNet-1k runs."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from trainer import imagenet
from trainer.cli import main
from trainer.report import report


def _run_folder(tmp_path: Path, classes: list[str], val_samples: int = 10) -> Path:
    """A run folder as alextrain writes it (config.json, metrics.jsonl) over data with `classes`."""
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir(parents=True)
    run.mkdir()
    rows = [{"index": i, "name": c, "wnid": c, "label": None} for i, c in enumerate(classes)]
    (data / "classes.json").write_text(json.dumps(rows))
    (run / "config.json").write_text(json.dumps({"data": str(data), "num_classes": len(classes)}))
    metrics = [
        {
            "epoch": e,
            "lr": 0.01,
            "train_loss": 6.0 - e,
            "val_top1_err": 0.9 - e / 10,
            "val_top5_err": 0.7 - e / 10,
        }
        for e in range(3)
    ]
    for m in metrics:
        m["val_samples"] = val_samples
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


def test_ilsvrc2012_run_stands_beside_table2(tmp_path):
    run = _run_folder(tmp_path, list(imagenet.synsets())[::-1])  # any order of the 1,000 wnids
    result = report(run, run / "report.md")
    text = (run / "report.md").read_text()
    assert result["compared_with_paper"] and "| paper: 1 CNN | 40.7 | 18.2 |" in text
    assert "validated on 10 images, not ILSVRC-2012's 50,000" in text
    assert "| this run (epoch 2, numbered from 0; centre crop) | 70.0 | 50.0 |" in text


def test_other_data_is_not_put_beside_table2_and_the_report_says_why(tmp_path):
    ten = _run_folder(tmp_path / "ten", [f"class{i}" for i in range(10)])
    result = report(ten, ten / "report.md")
    text = (ten / "report.md").read_text()
    assert not result["compared_with_paper"] and "paper:" not in text
    assert "this run has 10 classes" in text and "not compared with the paper's Table 2" in text
    other = _run_folder(tmp_path / "other", [f"n{i:08d}" for i in range(1000)])  # 1,000, not ILSVRC's
    assert "not the 1,000 ILSVRC-2012 wnids" in report(other, other / "r.md")["why"]
    gone = _run_folder(tmp_path / "gone", list(imagenet.synsets()))
    (gone.parent / "data" / "classes.json").unlink()  # the data moved away: cannot tell
    assert "cannot be checked" in report(gone, gone / "r.md")["why"]


def test_one_epoch_numbering_in_log_metrics_and_report(demo_run):
    """The log's last line, metrics.jsonl and the report all call the last of 2 epochs "epoch 1"."""
    metrics = [json.loads(line) for line in (demo_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    result = CliRunner().invoke(main, ["report", str(demo_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "this run has 10 classes" in result.stdout
    assert "| this run (epoch 1, numbered from 0;" in (demo_run / "report.md").read_text()
    assert Image.open(demo_run / "report.png").size == (1200, 350)
    assert "done: epoch 1," in (demo_run.parent / "run.log").read_text()  # the log's last line
