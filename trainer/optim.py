"""The paper's SGD (section 5) and its learning-rate schedule.

    v <- 0.9 v - 0.0005 * eps * w - eps * dL/dw
    w <- w + v

torch.optim.SGD keeps a buffer of raw gradients and multiplies by the *current* lr at each step,
so when the lr drops 10x the whole accumulated velocity drops 10x at once. Here the velocity
carries the old lr's steps and decays by momentum, exactly as printed. With a constant lr the
two agree (v = -lr * buf); the tests check both facts.

Weight decay applies to weights, not biases (as in Krizhevsky's cuda-convnet, where biases
have no decay); `decay_biases=True` applies it to every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from preprocess.paper import LEARNING_RATE, LR_DROP, MAX_DROPS, MOMENTUM, WEIGHT_DECAY


class PaperSGD(torch.optim.Optimizer):
    """v <- m v - wd lr w - lr g;  w <- w + v  (per parameter group; groups set wd)."""

    def __init__(
        self,
        params,
        lr: float = LEARNING_RATE,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(m).add_(p.grad, alpha=-lr)
                if wd:
                    v.add_(p, alpha=-wd * lr)
                p.add_(v)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float, decay_biases: bool) -> list[dict]:
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "weight_decay": weight_decay if decay_biases else 0.0},
    ]


@dataclass
class PlateauSchedule:
    """Divide the lr by 10 when validation error has not improved for `patience` epochs,
    at most `max_drops` times (the paper's manual heuristic, made mechanical).

    "Improved" is strictly below the best so far. Each drop is kept in `last_drop` with the
    validation errors that triggered it (the best and every epoch since), so the metrics row and
    the epoch line say why the lr fell: on ImageNet the epochs of the drops are not known in
    advance, and a reader must be able to check each one.
    """

    lr: float = LEARNING_RATE
    patience: int = 3
    max_drops: int = MAX_DROPS
    best: float = float("inf")
    bad_epochs: int = 0
    drops: int = 0
    since_best: list[float] = field(default_factory=list)  # val errors since the best, in order
    last_drop: dict | None = None

    def begin(self, epoch: int) -> None:
        """The lr of an epoch depends only on past validation errors (see update)."""

    def update(self, val_error: float) -> bool:
        """Record an epoch's validation error; True when the lr was just divided."""
        if val_error < self.best:
            self.best, self.bad_epochs, self.since_best = val_error, 0, []
            return False
        self.bad_epochs += 1
        self.since_best = [*self.since_best, val_error]
        if self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.last_drop = {
                "lr_from": self.lr,
                "lr_to": self.lr / LR_DROP,
                "best_val_err": self.best,
                "val_errs_since_best": self.since_best[-self.patience :],
                "patience": self.patience,
            }
            self.lr /= LR_DROP
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict:
        return dict(
            lr=self.lr,
            patience=self.patience,
            max_drops=self.max_drops,
            best=self.best,
            bad_epochs=self.bad_epochs,
            drops=self.drops,
            since_best=list(self.since_best),
            last_drop=self.last_drop,
        )

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def describe_drop(drop: dict) -> str:
    """A drop for the epoch line: the lr change and the validation errors that caused it."""
    errs = ", ".join(f"{e:.4f}" for e in drop["val_errs_since_best"])
    return (
        f"lr {drop['lr_from']:.2g} -> {drop['lr_to']:.2g}: val top-1 err {errs} "
        f"not below the best {drop['best_val_err']:.4f} for {drop['patience']} epochs"
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class StepSchedule:
    """Divide the lr by 10 at fixed epochs (`--schedule step --lr-steps 30,60,80`).

    For runs without a validation split, where a plateau cannot be seen. The paper gives no
    epochs for its three drops ("when the validation error stopped improving"), only ~90 in all.
    """

    lr: float = LEARNING_RATE
    base_lr: float = LEARNING_RATE
    steps: tuple[int, ...] = (30, 60, 80)

    def begin(self, epoch: int) -> None:
        """Set the lr for `epoch` (a function of the epoch alone, so resume is exact)."""
        self.lr = self.base_lr / LR_DROP ** sum(epoch >= s for s in self.steps)

    def update(self, val_error: float) -> bool:  # noqa: ARG002 (the same interface as plateau)
        return False

    def state_dict(self) -> dict:
        return dict(lr=self.lr, base_lr=self.base_lr, steps=list(self.steps))

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.base_lr, self.steps = state["lr"], state["base_lr"], tuple(state["steps"])
