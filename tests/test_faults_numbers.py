"""Non-finite numbers (issue 21, class 1): every number read from disk is checked where it is
loaded, a diverging run stops at its first NaN without saving it, and no command turns NaN
weights into a result that looks like one."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.augment import StatsError, load_stats
from tests.conftest import alextrain
from tests.faults_common import cifar_checkpoint, jpeg, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("numbers"))


@pytest.fixture
def copy(data, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(data, out)
    return out


def _edit_stats(out: Path, key: str, index: tuple, value: float) -> None:
    s = json.loads((out / "stats.json").read_text())
    target = s[key]
    for i in index[:-1]:
        target = target[i]
    target[index[-1]] = value
    (out / "stats.json").write_text(json.dumps(s))  # writes NaN / Infinity as Python's json does


@pytest.mark.parametrize(
    "key, index, value, message",
    [
        ("eigval", (0,), math.nan, "non-finite values (NaN or inf) in eigval"),
        ("eigvec", (1, 2), math.inf, "non-finite values (NaN or inf) in eigvec"),
        ("mean_rgb", (2,), math.inf, "non-finite values (NaN or inf) in mean_rgb"),
        ("std_rgb", (0,), 0.0, "std_rgb [0.0"),
        ("std_rgb", (1,), math.nan, "non-finite values (NaN or inf) in std_rgb"),
        # not in the list: a negative std, a mean off the pixel scale, a rotated basis
        ("std_rgb", (2,), -3.0, "has a value <= 0"),
        ("mean_rgb", (0,), 300.0, "not on the 0-255 pixel scale"),
        ("eigvec", (0, 0), 5.0, "eigvec is not orthonormal"),
    ],
)
def test_stats_json_with_an_unusable_number_is_refused_where_loaded(copy, key, index, value, message):
    load_stats(copy)  # the untouched copy loads
    _edit_stats(copy, key, index, value)
    with pytest.raises(StatsError, match="re-run `alexprep pca-stats") as e:
        load_stats(copy)
    assert message in str(e.value) and str(copy / "stats.json") in str(e.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0])  # inf and < 0: not in the list
def test_a_mean_image_with_one_bad_pixel_is_refused(copy, value):
    mean = np.load(copy / "mean_image.npy")
    mean[3, 4, 1] = value
    np.save(copy / "mean_image.npy", mean)
    with pytest.raises(StatsError, match=r"mean_image.npy: .*(non-finite|outside 0-255)"):
        load_stats(copy)


def test_a_diverging_run_stops_at_its_first_nan_and_never_saves_it(data, tmp_path):
    # not in the list (its NaNs came from the stats, refused above): an lr and a weight
    # decay that make the weights grow ~9x a step, to inf within the first epoch
    run = tmp_path / "run"
    proc = alextrain(
        "run", "--data", data, "--out", run, "--arch", "cifar", "--crop", 32, "--epochs", 1,
        "--global-batch", 1, "--lr", 10, "--weight-decay", 0.99, "--momentum", 0.99,
        "--checkpoint-every", 5, "--num-threads", 1, "--device", "cpu", "--quiet", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "epoch 0 step " in err[0] and "NaN or inf" in err[0], proc.stderr
    assert not (run / "best.pt").exists()
    assert (run / "metrics.jsonl").read_text() == ""  # no epoch row with a NaN loss
    from trainer import checkpoint

    state = checkpoint.load(run / "last.pt")  # the last finite one: load checks every tensor
    assert state["step"] < int(err[0].split("step ")[1].split(":")[0]) + 1


@pytest.fixture
def nan_ckpt(tmp_path) -> Path:
    return cifar_checkpoint(tmp_path / "nan.pt", poison="body.0.weight")


def _cli(*args: object):  # noqa: ANN202
    from trainer.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("command", ["eval", "ensemble", "kernels", "predict", "neighbors", "init-from"])
def test_every_command_refuses_nan_weights(data, tmp_path, nan_ckpt, command):
    good = cifar_checkpoint(tmp_path / "good.pt")
    image = tmp_path / "q.jpg"
    image.write_bytes(jpeg((10, 200, 30)))
    args = {
        "eval": ("eval", "--data", data, "--checkpoint", nan_ckpt, "--device", "cpu", "--num-threads", 1),
        "ensemble": (
            "eval", "--data", data, "--checkpoint", good, "--checkpoint", nan_ckpt, "--device", "cpu",
            "--num-threads", 1,
        ),
        "kernels": ("kernels", nan_ckpt, "--out", tmp_path / "k.png"),
        "predict": ("predict", nan_ckpt, image, "--data", data, "--device", "cpu"),
        "neighbors": ("neighbors", nan_ckpt, "--data", data, "--query", image, "--device", "cpu"),
        "init-from": (
            "run", "--data", data, "--out", tmp_path / "run", "--arch", "cifar", "--epochs", 1,
            "--global-batch", 4, "--init-from", nan_ckpt, "--device", "cpu", "--num-threads", 1, "--quiet",
        ),
    }[command]  # fmt: skip
    result = _cli(*args)
    assert result.exit_code == 2, result.output
    assert f"{nan_ckpt}: 1 tensor(s) hold NaN or inf (e.g. body.0.weight)" in result.stderr
    assert "top-1" not in result.output and not (tmp_path / "k.png").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_checkpoint_with_a_nan_velocity_cannot_be_resumed(tmp_path):
    # not in the list: the weights are finite, the optimiser's momentum is not
    import torch

    from trainer import checkpoint

    path = cifar_checkpoint(tmp_path / "c.pt")
    state = torch.load(path, weights_only=True)
    state["optimizer"] = {"state": {0: {"velocity": torch.tensor([1.0, float("inf")])}}}
    torch.save(state, path)
    with pytest.raises(checkpoint.CheckpointError, match="optimizer velocity 0"):
        checkpoint.load(path)


def test_non_finite_predictions_give_no_error_rate():
    import torch

    from trainer.errors import TrainError
    from trainer.evaluate import Tally

    t = Tally()
    t.add(torch.tensor([[0.7, 0.3], [float("nan"), float("nan")]]), torch.tensor([0, 1]))
    with pytest.raises(TrainError, match="1 of 2 predictions are NaN or inf"):
        t.result()
