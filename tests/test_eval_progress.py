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
    centre = _eval("--data", data, "--checkpoint", demo_run, "--num-threads", 1, "--centre-crop")
    assert f"split 'val' of {data}, centre crop:" in centre.stdout
    assert "eval val (centre crop)" in centre.stderr and "40/40" in centre.stderr  # the bar reached the end
    ten = _eval("--data", data, "--checkpoint", demo_run, "--num-threads", 1, "--split", "train")
    assert f"split 'train' of {data}, ten-crop (the paper's 10 patches" in ten.stdout  # the default
    assert "eval train (ten-crop)" in ten.stderr and "120/120" in ten.stderr
    quiet = _eval("--data", data, "--checkpoint", demo_run, "--num-threads", 1, "--json")
    assert json.loads(quiet.stdout)["split"] == "val" and "eval val" not in quiet.stderr  # JSON: no bar
    assert json.loads(quiet.stdout)["ten_crop"]


def test_inference_computes_in_fp32_whatever_torch_defaults_to():
    """cuDNN's TF32 default (on for convolutions) would make eval/predict/neighbors not fp32 on a
    GPU; the flags are process-wide, so they can be checked on the CPU."""
    import torch

    from trainer.inference import pick_device

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        pick_device("auto")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True  # torch's own default, for the tests after this one
