"""Checkpoint files: which one a path means, atomic writes, keeping best and last N."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import checkpoint
from trainer.checkpoint import CheckpointError


def test_resolve_prefers_best_then_last_and_names_the_problem(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match="no best.pt or last.pt"):
        checkpoint.resolve(run)
    checkpoint.save(run / "last.pt", {"epoch": 0})
    assert checkpoint.resolve(run) == run / "last.pt"
    checkpoint.save(run / "best.pt", {"epoch": 1})
    assert checkpoint.resolve(run) == run / "best.pt"
    assert checkpoint.resolve(run / "last.pt") == run / "last.pt"  # a file is itself
    with pytest.raises(CheckpointError, match="no such checkpoint or run folder"):
        checkpoint.resolve(tmp_path / "missing")
    assert torch.load(run / "best.pt", weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt"]  # no temporary left
