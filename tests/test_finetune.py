"""`--init-from`: a run starts from another run's weights (fine-tuning, Table 2's starred rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import alexprep, alextrain
from trainer import checkpoint
from trainer.finetune import FineTuneError, describe, init_from
from trainer.model import AlexNet, ModelConfig, build_model

CIFAR = dict(arch="cifar", crop=32)


def _save(model: torch.nn.Module, cfg: ModelConfig, path: Path) -> Path:
    checkpoint.save(path, {"model": checkpoint.cpu_state_dict(model), "model_config": cfg.to_dict()})
    return path


def test_classifier_reinitialised_when_the_class_count_differs(tmp_path):
    torch.manual_seed(0)
    src_cfg = ModelConfig(num_classes=10, **CIFAR)
    src = build_model(src_cfg)
    path = _save(src, src_cfg, tmp_path / "last.pt")
    torch.manual_seed(1)
    new = build_model(ModelConfig(num_classes=2, **CIFAR))
    fresh_fc = new.fc.weight.clone()
    result = init_from(new, tmp_path, ModelConfig(num_classes=2, **CIFAR))  # a run folder works
    assert result["checkpoint"] == str(path)
    assert result["reinitialised"] == ["fc.weight", "fc.bias"]
    for name, p in new.named_parameters():
        if not name.startswith("fc."):
            assert torch.equal(p, src.state_dict()[name]), name
    assert torch.equal(new.fc.weight, fresh_fc)  # its own init, not the 10-class layer
    # the same class count: everything comes over, the classifier too
    same = build_model(src_cfg)
    assert init_from(same, path, src_cfg)["reinitialised"] == []
    assert torch.equal(same.fc.weight, src.fc.weight)


@pytest.mark.slow  # over ~20 s on 2 cores
def test_new_sixth_conv_layer_keeps_its_init_and_the_rest_is_copied(tmp_path):
    torch.manual_seed(0)
    src_cfg = ModelConfig(towers=1, num_classes=10)
    src = AlexNet(src_cfg)
    path = _save(src, src_cfg, tmp_path / "src.pt")
    cfg = ModelConfig(towers=1, num_classes=10, extra_conv=True)
    new = AlexNet(cfg)
    conv6 = {k: v.clone() for k, v in new.state_dict().items() if k.startswith("conv6.")}
    result = init_from(new, path, cfg)
    assert sorted(result["reinitialised"]) == sorted(conv6)
    assert "RANDOM conv6" in describe(result)  # the other path than the paper's, said plainly
    # fc6 sees conv6's output, of the same shape as pool5's, so it is copied like the rest
    assert torch.equal(new.fc6.parts[0].weight, src.fc6.parts[0].weight)
    assert all(torch.equal(new.state_dict()[k], v) for k, v in conv6.items())
    # back from a 6-conv source into a 5-conv model: conv6 is not used, and said so
    back = AlexNet(src_cfg)
    assert {
        k.split(".")[0] for k in init_from(back, _save(new, cfg, tmp_path / "six.pt"), src_cfg)["ignored"]
    } == {"conv6"}


def test_a_fresh_conv6_under_trained_layers_is_said_plainly_and_the_paper_route_is_not_warned():
    """1 CNN*: pre-trained with conv6 (copied like any layer, only the classifier is new) is the
    documented route; a source without conv6 puts a random conv6 under a trained fc6."""
    copied = ["conv1.parts.0.weight", "conv5.parts.0.weight", "fc6.parts.0.weight"]
    paper_route = {"checkpoint": "pre/best.pt", "copied": [*copied, "conv6.parts.0.weight"], "ignored": []}
    line = describe({**paper_route, "reinitialised": ["fc8.weight", "fc8.bias"]})
    assert line == "init from pre/best.pt: 4 tensors copied; new init: fc8" and "\n" not in line
    other = describe({**paper_route, "copied": copied, "reinitialised": ["conv6.parts.0.weight"]})
    first, note = other.split("\n")
    assert first == "init from pre/best.pt: 3 tensors copied; new init: conv6"
    assert note.startswith("note: the source has no conv6, so this run puts a RANDOM conv6")
    assert "pre-train with --extra-conv, then fine-tune with --extra-conv --init-from" in note
    # nothing trained to sit on top of (every tensor new): no note
    assert "\n" not in describe(
        {"checkpoint": "x.pt", "copied": [], "ignored": [], "reinitialised": ["conv6.w"]}
    )


def test_incompatible_sources_are_refused_by_name(tmp_path):
    cifar_cfg = ModelConfig(num_classes=10, **CIFAR)
    path = _save(build_model(cifar_cfg), cifar_cfg, tmp_path / "c.pt")
    with pytest.raises(FineTuneError, match="needs the same arch"):
        init_from(AlexNet(ModelConfig(towers=1)), path, ModelConfig(towers=1))
    small = ModelConfig(num_classes=10, arch="cifar", crop=24)  # fc's input differs
    with pytest.raises(FineTuneError, match=r"fc.weight has shape \(10, 576\), this model needs \(10, 256\)"):
        init_from(build_model(small), path, small)
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        init_from(build_model(cifar_cfg), tmp_path / "nope", cifar_cfg)


@pytest.fixture(scope="module")
def two_classes(cifar_root, tmp_path_factory) -> Path:
    """automobile vs frog from the real CIFAR-10 JPEGs: 10,000 train, 2,000 test, 32px shards."""
    src = tmp_path_factory.mktemp("two-src")
    for split in ("train", "test"):
        for name in ("automobile", "frog"):
            (src / split).mkdir(exist_ok=True)
            (src / split / name).symlink_to(cifar_root / split / name)
    out = tmp_path_factory.mktemp("two") / "shards"
    alexprep("shard", src, out, "--size", 32, "--shard-size", 5000, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    return out


def _first_epoch(data: Path, out: Path, *extra: object) -> dict:
    alextrain(
        "run",
        "--data",
        data,
        "--out",
        out,
        "--arch",
        "cifar",
        "--crop",
        32,
        "--epochs",
        1,
        "--steps-per-epoch",
        8,
        "--num-threads",
        2,
        "--quiet",
        *extra,
    )
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.slow
def test_fine_tuning_a_two_class_run_from_a_ten_class_run_starts_better(cifar_run, two_classes, tmp_path):
    scratch = _first_epoch(two_classes, tmp_path / "scratch")
    tuned = _first_epoch(two_classes, tmp_path / "tuned", "--init-from", cifar_run)
    # 8 steps: from scratch the net is still near chance (50 %); the 10-class features are not
    assert tuned["val_top1_err"] < scratch["val_top1_err"] - 0.1, (tuned, scratch)
    assert tuned["train_top1_err"] < scratch["train_top1_err"]
    state = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)
    assert state["model_config"]["num_classes"] == 2
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["run"]["init_from"] == str(cifar_run)
    # the new run's own optimiser state: the velocities of these 8 steps, not the source's
    mine = state["optimizer"]["state"]
    theirs = torch.load(cifar_run / "last.pt", weights_only=True)["optimizer"]["state"]
    assert [tuple(v["velocity"].shape) for v in mine.values()].count((2, 576)) == 1
    assert not torch.equal(mine[0]["velocity"], theirs[0]["velocity"])  # conv1's
