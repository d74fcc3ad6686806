"""Checkpoints: atomic, complete enough to resume exactly, loadable with weights_only=True.

Contents: model weights (CPU tensors, the same layout whatever the device placement), optimiser
and schedule state, epoch and step, the torch RNG state, the loader's position (epochs are the
unit: each epoch's data order and augmentation are a function of (seed, epoch, rank)), and the
resolved config. Nothing but tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from shards import layout

LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(Exception):
    """Missing, unreadable, or made for another model."""


def save(path: Path, state: dict) -> None:
    """Atomically: after a crash `path` is the previous checkpoint or this one, never a mix."""
    buf = io.BytesIO()
    torch.save(state, buf)
    layout.write_atomic(path, buf.getvalue())


def resolve(path: Path) -> Path:
    """The checkpoint a user means: a run folder -> its best.pt, else its last.pt; a file -> itself.

    So `eval`, `predict`, `report` ... accept `RUN` as well as `RUN/last.pt`.
    """
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: a folder with no {BEST} or {LAST} (not a run folder?)")
    if path.is_file():
        return path
    raise CheckpointError(f"{path}: no such checkpoint or run folder")


def load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a corrupt or foreign file: say which)
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.__class__.__name__})") from None


def check_model(state: dict, model_config: dict, path: Path) -> None:
    """Refuse a checkpoint whose architecture or class count differs from the model's."""
    saved = state.get("model_config", {})
    keys = ("arch", "num_classes", "towers", "extra_conv", "conv1_padding")
    diff = [
        f"{k}: checkpoint {saved.get(k)!r} vs {model_config.get(k)!r}"
        for k in keys
        if saved.get(k) != model_config.get(k)
    ]
    if diff:
        raise CheckpointError(f"{path}: made for another model ({'; '.join(diff)})")


def cpu_state_dict(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
