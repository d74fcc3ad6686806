"""`alextrain eval` shows progress while it works and names the split and the crop mode."""

from __future__ import annotations

import json

from click.testing import CliRunner

from trainer.cli import main


def _eval(*args: object):  # noqa: ANN202
    result = CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result


def test_eval_names_split_and_crop_and_shows_progress(demo_data, demo_run):
    data = demo_data / "shards"
    centre = _eval("--data", data, "--checkpoint", demo_run, "--num-threads", 1)
    assert f"split 'val' of {data}, centre crop:" in centre.stdout
    assert "eval val (centre crop)" in centre.stderr and "40/40" in centre.stderr  # the bar reached the end
    ten = _eval(
        "--data", data, "--checkpoint", demo_run, "--num-threads", 1, "--ten-crop", "--split", "train"
    )
    assert f"split 'train' of {data}, ten-crop (the paper's 10 patches" in ten.stdout
    assert "eval train (ten-crop)" in ten.stderr and "120/120" in ten.stderr
    quiet = _eval("--data", data, "--checkpoint", demo_run, "--num-threads", 1, "--json")
    assert json.loads(quiet.stdout)["split"] == "val" and "eval val" not in quiet.stderr  # JSON: no bar
