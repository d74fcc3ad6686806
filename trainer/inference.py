"""Loading trained checkpoints for evaluation: one model, or the average of several."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.augment import StatsError
from pipeline.loader import EvalLoader, Feed, LoaderConfig
from shards.reader import DatasetError, default_val_split, load_classes, load_dataset
from trainer import checkpoint
from trainer.config import SECTIONS, TrainConfig
from trainer.distributed import allow_tf32
from trainer.errors import TrainError
from trainer.evaluate import evaluate_many
from trainer.model import ModelConfig, build_model
from trainer.runstate import data_identity


def pick_device(name: str) -> torch.device:
    """--device auto|cuda|cpu -> the one device a command puts its model AND its loader on.

    Inference is the paper's fp32: torch's cuDNN defaults to TF32 convolutions on Ampere and
    later, which would quietly make eval, predict and neighbors something else (section 5's
    arithmetic; TF32 is a training choice, `alextrain run --precision tf32`)."""
    allow_tf32(False)
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda, but no CUDA GPU is visible")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def load_model(
    path: Path, device: torch.device, num_classes: int | None = None
) -> tuple[torch.nn.Module, dict]:
    """The model of a checkpoint file or run folder (its best.pt, else last.pt), in eval mode."""
    path = checkpoint.resolve(path)
    state = checkpoint.load(path)
    mc = state.get("model_config")
    if mc is None:
        raise checkpoint.CheckpointError(f"{path}: not an alextrain checkpoint (no model_config)")
    saved = state.get("config")
    if not isinstance(saved, dict) or set(saved) != set(SECTIONS):
        # the input preprocessing the model was trained with: needed by every caller
        raise checkpoint.CheckpointError(
            f"{path}: not an alextrain 0.2 checkpoint (no config with {SECTIONS})"
        )
    try:
        state["config"] = TrainConfig.from_dict(saved, "its config").flat()
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointError(f"{path}: not an alextrain 0.2 checkpoint ({e})") from None
    try:
        config = ModelConfig.from_dict(mc)
    except (TypeError, ValueError) as e:  # not a dict, or a key missing or unknown
        raise checkpoint.CheckpointError(f"{path}: malformed model_config ({e})") from None
    if num_classes is not None and config.num_classes != num_classes:
        raise checkpoint.CheckpointError(
            f"{path}: made for {config.num_classes} classes, the dataset has {num_classes}"
        )
    model = build_model(config)
    try:
        model.load_state_dict(state.get("model"))
    except (RuntimeError, TypeError, AttributeError) as e:
        raise checkpoint.CheckpointError(
            f"{path}: weights do not fit its architecture ({' '.join(str(e).split())})"
        ) from None
    return model.to(device).eval(), state


def check_fits(state: dict, path: Path, data: Path, now: dict) -> None:
    """DATA can be read as the model of `state` was trained: the same classes in the same order
    (permuted, every label is scored against another class), the same stored size (its crop
    would see another scale) and the same statistics (its input normalisation is part of the
    model; an eval-only set has none of its own: it takes the training set's). Checked against
    the checkpoint's dataset fingerprint; what an older checkpoint does not record is not.
    `now`: DATA's `runstate.data_identity`, read once for however many checkpoints."""
    saved = state.get("dataset") if isinstance(state.get("dataset"), dict) else {}
    source = state["config"].get("data") or "the training set"
    copy = f"copy stats.json and mean_image.npy from {source} into {data}"
    if saved.get("class_names_sha256") not in (None, now["class_names_sha256"]):  # not their labels
        raise DatasetError(
            f"{data}/classes.json: not the classes {path} was trained on (other names or another "
            "order: its outputs would be scored against the wrong labels)"
        )
    if saved.get("size") not in (None, now["size"]):
        raise DatasetError(
            f"{data}: images stored at {now['size']}px, {path} was trained on {saved['size']}px "
            f"(its crop would see them at another scale); shard them with --size {saved['size']}"
        )
    if now["stats_sha256"] is None:
        raise StatsError(
            f"{data}/stats.json: missing; a model is evaluated with the statistics it was trained with; "
            f"{copy}"
        )
    if saved.get("stats_sha256") not in (None, now["stats_sha256"]):
        raise StatsError(
            f"{data}/stats.json: not the statistics {path} was trained with (pca-stats re-run, or "
            f"another dataset's); {copy}"
        )


def _refuse_same_weights(path: Path, mine: dict, earlier: list[tuple[Path, dict]]) -> None:
    """One model given twice (a run folder and its last.pt, a hard link or a copy: best.pt is
    often last.pt's hard link) would be averaged as two CNNs."""
    for other, theirs in earlier:
        if path.resolve() == other.resolve():
            raise ValueError(
                f"--checkpoint: {path} is given twice (a run folder means its best.pt, else last.pt)"
            )
        if mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine):
            raise ValueError(f"--checkpoint: {path} holds the same weights as {other}; give each model once")


def evaluate_checkpoints(
    data: Path,
    paths: list[Path],
    split: str | None,
    ten_crop: bool,
    batch_size: int,
    device: str,
    num_threads: int | None = None,
    progress: bool = False,
) -> dict:
    """Top-1/top-5 error of each checkpoint (file or run folder) and, for several, their average.

    `progress`: a bar on stderr naming the split and crop mode (ten-crop on ImageNet's val takes
    a while, and a silent command looks hung)."""
    meta = load_dataset(data)
    have = ", ".join(sorted(meta["splits"]))
    if split is not None and split not in meta["splits"]:
        raise ValueError(f"--split {split}: {data} has no such split (have: {have})")
    split = split or default_val_split(meta)
    if split is None:
        raise ValueError(f"{data}: no val, validation or test split to evaluate (have: {have}); pass --split")
    dev = pick_device(device)
    num_classes = len(load_classes(data))
    paths = [checkpoint.resolve(p) for p in paths]
    models, configs, seen, now = [], [], [], data_identity(data, meta)
    for p in paths:
        m, state = load_model(p, dev, num_classes)
        check_fits(state, p, data, now)
        _refuse_same_weights(p, state["model"], seen)
        models.append(m)
        configs.append(state["config"])
        seen.append((p, state["model"]))
    cfg = configs[0]
    for p, c in zip(paths[1:], configs[1:], strict=True):
        if (c["crop"], c["normalization"]) != (cfg["crop"], cfg["normalization"]):
            raise ValueError(f"{p}: trained with other input preprocessing than {paths[0]}")
    loader_cfg = LoaderConfig(
        normalization=cfg["normalization"],
        num_threads=cfg["num_threads"] if num_threads is None else num_threads,
    )
    feed = Feed(batch_size=batch_size, crop=cfg["crop"], device=dev.type)
    loader = EvalLoader(data, loader_cfg, feed, split=split, ten_crop=ten_crop)
    names = [str(p) for p in paths] + ([f"average of {len(models)}"] if len(models) > 1 else [])
    total = sum(f.get("samples", 0) for f in meta["splits"][split].get("files", {}).values()) or None
    mode = "ten-crop" if ten_crop else "centre crop"
    with tqdm(total=total, desc=f"eval {split} ({mode})", unit="img", disable=not progress) as bar:
        results = evaluate_many(models, loader, bar=bar)
    rows = [{"model": n, **r} for n, r in zip(names, results, strict=True)]
    return {"split": split, "ten_crop": ten_crop, "rows": rows}
