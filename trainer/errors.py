"""The trainer's user-facing errors, importable without torch (so `alextrain --help` is fast).

`trainer.checkpoint` and `trainer.train` re-export them; the CLI turns each into a one-line error.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Missing, unreadable, or made for another model."""


class TrainError(Exception):
    """A user-facing problem with the run's setup (data, devices, checkpoint)."""


class FigureError(Exception):
    """A figure cannot be made: an image that does not decode, a checkpoint without conv1, ..."""
