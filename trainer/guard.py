"""Stop a run whose numbers stopped being numbers: a NaN or inf loss or weight.

One NaN (a bad statistic, an lr too high) spreads to every weight within a step or two, after
which the run goes on "training", evaluates to chance, and would save that as best.pt. The loop
never waits for the device per step, so the check is cheap: each step records, on the device,
the first step whose loss was non-finite (`Sums.add`); the host reads it at the existing log
interval (every LOG_EVERY steps), at the epoch's end, and before every checkpoint, where the
weights are checked too. Nothing non-finite is ever written as last.pt or best.pt.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from trainer.errors import TrainError

_NONE = 2**62  # "no bad step" in a MIN reduction


class NonFiniteError(TrainError):
    """The loss or the weights became NaN or inf; the message names the epoch and the step."""


def mark(bad_step: torch.Tensor, loss: torch.Tensor, step: int) -> torch.Tensor:
    """`bad_step` (-1: none yet), or `step` if this is the first non-finite loss: device ops only."""
    bad = (bad_step < 0) & ~torch.isfinite(loss.detach())
    return torch.where(bad, torch.full_like(bad_step, step), bad_step)


def _weights_bad(model: nn.Module, device: torch.device) -> torch.Tensor:
    flags = [~torch.isfinite(p.detach()).all().to(device) for p in model.parameters()]
    return torch.stack(flags).any() if flags else torch.zeros((), dtype=torch.bool, device=device)


def check(bad_step: torch.Tensor, model: nn.Module | None, epoch: int, step: int, world: int) -> None:
    """Raise NonFiniteError if a loss so far this epoch (or, with `model`, a weight) is not finite.

    `step`: the epoch's step reached (named when only the weights are bad). Every rank calls this
    together under DDP (one small all-reduce), so every rank stops at the same point.
    """
    at = torch.where(bad_step >= 0, bad_step, torch.full_like(bad_step, _NONE))
    if model is not None:
        at = torch.where(_weights_bad(model, at.device), torch.minimum(at, torch.full_like(at, step)), at)
    if world > 1:
        dist.all_reduce(at, op=dist.ReduceOp.MIN)
    first = int(at.item())
    if first == _NONE:
        return
    raise NonFiniteError(
        f"epoch {epoch} step {first}: the training loss or weights became NaN or inf; stopped, and "
        "nothing from this point was saved (last.pt/best.pt are the previous ones): check the "
        "data's stats.json and mean_image.npy, or train again with a lower --lr into a new --out"
    )
