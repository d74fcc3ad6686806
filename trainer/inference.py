"""Loading trained checkpoints for evaluation: one model, or the average of several."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.loader import EvalLoader, LoaderOptions
from shards import layout
from shards.reader import load_dataset
from trainer import checkpoint
from trainer.evaluate import evaluate_many
from trainer.model import ModelConfig, build_model


def load_model(
    path: Path, device: torch.device, num_classes: int | None = None
) -> tuple[torch.nn.Module, dict]:
    state = checkpoint.load(path)
    mc = state.get("model_config")
    if mc is None:
        raise checkpoint.CheckpointError(f"{path}: not an alextrain checkpoint (no model_config)")
    if num_classes is not None and mc["num_classes"] != num_classes:
        raise checkpoint.CheckpointError(
            f"{path}: made for {mc['num_classes']} classes, the dataset has {num_classes}"
        )
    model = build_model(ModelConfig.from_dict(mc))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"{path}: weights do not fit its architecture ({e})") from None
    return model.to(device).eval(), state


def evaluate_checkpoints(
    data: Path, paths: list[Path], split: str | None, ten_crop: bool, batch_size: int, device: str
) -> dict:
    meta = load_dataset(data)
    split = split or next((s for s in ("val", "validation", "test") if s in meta["splits"]), None)
    if split is None or split not in meta["splits"]:
        raise ValueError(f"{data}: no split to evaluate (have {sorted(meta['splits'])})")
    dev = torch.device(
        "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    num_classes = len(json.loads((data / layout.CLASSES_JSON).read_text()))
    models, configs = [], []
    for p in paths:
        m, state = load_model(p, dev, num_classes)
        models.append(m)
        configs.append(state["config"])
    cfg = configs[0]
    for p, c in zip(paths[1:], configs[1:], strict=True):
        if (c["crop"], c["normalization"]) != (cfg["crop"], cfg["normalization"]):
            raise ValueError(f"{p}: trained with other input preprocessing than {paths[0]}")
    opt = LoaderOptions(
        batch_size=batch_size,
        device=dev.type,
        crop=cfg["crop"],
        normalization=cfg["normalization"],
        lighting="off",
        num_threads=cfg.get("num_threads", 4),
    )
    loader = EvalLoader(data, opt, split=split, ten_crop=ten_crop)
    names = [str(p) for p in paths] + ([f"average of {len(models)}"] if len(models) > 1 else [])
    rows = [{"model": n, **r} for n, r in zip(names, evaluate_many(models, loader), strict=True)]
    return {"split": split, "ten_crop": ten_crop, "rows": rows}
