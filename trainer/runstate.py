"""A run's state, its one checkpoint format, and the resume protocol.

Exact resume: a checkpoint (at an epoch's end, or every `--checkpoint-every` steps) holds the
model, the optimiser, the schedule, the position (epoch, step in it) and the partial epoch's
metric sums of every rank. Every epoch's data order and augmentation are seeded from (seed,
epoch, rank), the loader can start an epoch at any step, and dropout is reseeded each step, so a
run killed at any point and resumed from its last checkpoint repeats exactly what the
uninterrupted run would have done from there on.

Many processes: rank 0 alone reads and writes the run folder. It decides whether to resume,
reads the checkpoint and broadcasts it, so the other ranks (other hosts, whose runs folder may
not be shared) start from the same weights, position and schedule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from shards import layout
from shards.reader import load_classes
from trainer import checkpoint
from trainer.config import TrainConfig, config_changes
from trainer.distributed import Env, broadcast
from trainer.errors import TrainError
from trainer.guard import check as check_finite
from trainer.guard import mark as mark_nonfinite
from trainer.metrics import METRICS, read_metrics
from trainer.optim import PaperSGD, PlateauSchedule, StepSchedule, param_groups


@dataclass
class Sums:
    """One epoch's training sums. Loss and hits stay on the device: a step never waits for the
    host; they are read at log intervals, checkpoints and the epoch's end."""

    loss: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    seen: int = 0
    seconds: float = 0.0
    # the epoch step of the first non-finite loss, -1 if none (trainer/guard.py; not checkpointed)
    bad_step: torch.Tensor = field(default_factory=lambda: torch.full((), -1, dtype=torch.int64))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, step: int = 0) -> None:
        if self.loss.device != loss.device:
            self.loss, self.correct = self.loss.to(loss.device), self.correct.to(loss.device)
            self.bad_step = self.bad_step.to(loss.device)
        self.bad_step = mark_nonfinite(self.bad_step, loss, step)
        self.loss += loss.detach()
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def totals(self, world: int) -> torch.Tensor:
        """[loss, correct, seen] of this rank, or of each rank ([world, 3]) under DDP."""
        mine = torch.stack(
            [self.loss, self.correct.double(), torch.tensor(float(self.seen), device=self.loss.device)]
        )
        if world == 1:
            return mine[None].cpu()
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine)
        return torch.stack(everyone).cpu()

    def state(self, world: int, seconds: float) -> dict:
        """Every rank's sums (all ranks call this together), so each resumes with its own."""
        return {"per_rank": self.totals(world), "seconds": seconds}

    @classmethod
    def from_state(cls, s: dict, rank: int) -> Sums:
        loss, correct, seen = s["per_rank"][rank]
        return cls(loss.clone(), correct.to(torch.int64), int(seen), float(s["seconds"]))

    def epoch_row(self, world: int, steps: int) -> dict:
        """The epoch's training metrics over all ranks."""
        loss, correct, seen = self.totals(world).sum(0).tolist()
        return dict(
            train_loss=loss / (steps * world),
            train_top1_err=1.0 - correct / max(seen, 1),
            img_per_s=seen / max(self.seconds, 1e-9),
            train_seconds=self.seconds,
            steps=steps,
        )


@dataclass
class Position:
    """Where a run stands: `epoch_step` steps into `epoch`, `step` steps in all."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0
    sums: Sums = field(default_factory=Sums)
    history: list[dict] = field(default_factory=list)
    best_top1_err: float | None = None


STATS_KEYS = ("mean_rgb", "std_rgb", "eigval", "eigvec")  # what the loaders use of stats.json


def stats_sha256(data: Path) -> str | None:
    """SHA-256 of what DATA/stats.json gives the loaders (None when there is none): its mean,
    std and eigenbasis and its mean image's hash, i.e. what the images are normalised and lit
    with. Not its provenance (the decoder's version): the same numbers are the same statistics."""
    try:
        s = json.loads((data / layout.STATS_JSON).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"  # the loader names what is wrong with it
    if not isinstance(s, dict):
        return "unreadable"
    made = s.get("computed_from") if isinstance(s.get("computed_from"), dict) else {}
    used = {**{k: s.get(k) for k in STATS_KEYS}, "mean_image_sha256": made.get("mean_image_sha256")}
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()


def data_identity(data: Path, meta: dict) -> dict:
    """What a model must find again in a dataset to be resumed or evaluated on it: the stored
    size (its crops' scale), its classes in order (its outputs' meaning: by name, for eval; the
    whole classes.json for resume) and the statistics its input is normalised with (a model is
    used with the statistics it was trained with)."""
    names = [c.get("name") for c in load_classes(data)]
    return {
        "size": meta["size"],
        "classes_sha256": hashlib.sha256((data / layout.CLASSES_JSON).read_bytes()).hexdigest(),
        "class_names_sha256": hashlib.sha256(json.dumps(names).encode()).hexdigest(),
        "stats_sha256": stats_sha256(data),
    }


DATASET_KEYS = {
    "plan_sha256": "its images or their order (plan_sha256 in dataset.json)",
    "classes_sha256": "its classes (classes.json)",
    "class_names_sha256": "its classes' names or order",
    "stats_sha256": "its statistics (stats.json: pca-stats re-run, or copied from another dataset)",
}


def dataset_change(saved: object, now: dict, data: Path) -> str | None:
    """What differs between a checkpoint's dataset fingerprint and this run's, as one clause, or
    None. A key the checkpoint lacks (written before the fingerprint had it) is not compared."""
    if not isinstance(saved, dict):
        return f"the dataset (the checkpoint's record of it is unreadable: {type(saved).__name__})"
    keys = sorted(k for k in saved if saved[k] != now.get(k))
    if not keys:
        return None
    what = ", ".join(DATASET_KEYS.get(k, k) for k in keys)
    return f"the dataset ({data} is not the one the run was trained on: {what} differ)"


def make_schedule(cfg: TrainConfig) -> PlateauSchedule | StepSchedule:
    o = cfg.optim
    if o.schedule == "step":
        return StepSchedule(lr=o.base_lr(), base_lr=o.base_lr(), steps=tuple(o.lr_steps or ()))
    return PlateauSchedule(lr=o.base_lr(), patience=o.patience, max_drops=o.max_drops)


class Trainer:
    """The training state of one process and the one way it is checkpointed."""

    def __init__(self, cfg: TrainConfig, env: Env, fingerprint: dict, model: nn.Module):
        self.cfg, self.env, self.fingerprint, self.model = cfg, env, fingerprint, model
        o = cfg.optim
        self.opt = PaperSGD(param_groups(model, o.weight_decay, o.decay_biases), lr=o.lr, momentum=o.momentum)
        self.schedule = make_schedule(cfg)
        self.pos = Position()
        self.run_dir = Path(cfg.run.out)
        self.saves = 0

    def state(self, sums: dict) -> dict:
        """The checkpoint of the current position; `sums`: Sums.state(), every rank's."""
        p = self.pos
        return {
            "format": checkpoint.FORMAT,
            "model": checkpoint.cpu_state_dict(self.model),
            "optimizer": self.opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": p.epoch,
            "epoch_step": p.epoch_step,
            "step": p.step,
            "sums": sums,
            "history": list(p.history),
            "best_top1_err": p.best_top1_err,
            "metrics": p.history[-1] if p.history else {},
            "config": self.cfg.to_dict(),
            "model_config": self.cfg.model.to_dict(),
            "dataset": self.fingerprint,
            "world": self.env.world,
            "backend": self.cfg.loader.resolved_backend(),
        }

    def save(self, seconds: float = 0.0, best: bool = False) -> None:
        """Rank 0 writes the checkpoint of the current position (every rank calls this)."""
        # never a non-finite state as last.pt or best.pt (all ranks check together)
        check_finite(self.pos.sums.bad_step, self.model, self.pos.epoch, self.pos.epoch_step, self.env.world)
        sums = self.pos.sums.state(self.env.world, seconds)  # a collective: every rank takes part
        if self.env.main:
            checkpoint.save_run(self.run_dir, self.state(sums), keep=self.cfg.run.keep, best=best)

    def refusal(self, state: dict, path: Path, flag: str = "--resume") -> str | None:
        """Why this run cannot continue `state`, or None (rank 0 checks; all ranks are told)."""
        ran = state.get("backend") if isinstance(state, dict) else None
        try:
            checkpoint.check_state(state, self.model, path)
            changed = config_changes(state["config"], self.cfg, ran=ran)
        except (checkpoint.CheckpointError, ValueError) as e:
            return f"{path}: {e}"
        data = dataset_change(state["dataset"], self.fingerprint, Path(self.cfg.run.data))
        if data:
            changed.append(data)
        runs = self.cfg.loader.resolved_backend()
        if ran is not None and ran != runs and not any(c.startswith("loader ") for c in changed):
            how = "nvidia.dali is not installed here" if ran == "dali" else f"pass --loader {ran} to go on"
            changed.append(f"the loader that ran (checkpoint {ran!r}, now {runs!r}: {how})")
        if state["world"] != self.env.world:
            changed.append(f"the process count (checkpoint {state['world']}, now {self.env.world})")
        if changed:
            return f"{path}: {flag} with other settings than the run's: " + "; ".join(changed)
        return None

    def restore(self, state: dict, path: Path) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.pos = Position(
                epoch=int(state["epoch"]),
                epoch_step=int(state["epoch_step"]),
                step=int(state["step"]),
                sums=Sums.from_state(state["sums"], self.env.rank),
                history=list(state["history"]),
                best_top1_err=state["best_top1_err"],
            )
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise checkpoint.CheckpointError(
                f"{path}: malformed checkpoint ({e.__class__.__name__}: {e})"
            ) from None


_COPY = f"to go on from one, copy it to {checkpoint.LAST} and --resume; best.pt is the best epoch's state"


def folder_refusal(run_dir: Path, resume: bool, auto_resume: bool) -> str | None:
    """Why rank 0 refuses to start in `run_dir`, as far as the folder alone tells (a resume
    with no checkpoint, a new run over an old one); None if it may. Asked before any hashing."""
    last = run_dir / checkpoint.LAST
    if last.exists():
        if resume or auto_resume:
            return None
        return f"{run_dir}: holds a run already; pass --resume to continue it, or use a new --out"
    left = trained_here(run_dir)
    if left:  # a run trained here and its last.pt was lost: starting anew would overwrite the rest
        way = f"{_COPY}, or use" if any(n.endswith(".pt") for n in left) else "remove them, or use"
        held = ", ".join(left)
        return f"{last}: missing, though {run_dir} holds {held} of a run trained there; {way} a new --out"
    if resume and not auto_resume:
        return f"{last}: no such checkpoint (--resume): no run was started in {run_dir}"
    return None


def trained_here(run_dir: Path, besides: Path | None = None) -> list[str]:
    """What a run leaves once it has finished an epoch, besides last.pt: best.pt, kept
    step-*.pt, metrics.jsonl rows. A start killed before its first checkpoint leaves none.
    `besides`: leave out the files that are this one (hard links of it)."""
    files = [p for p in (run_dir / checkpoint.BEST, *checkpoint.kept(run_dir)) if p.is_file()]
    if besides is not None and besides.is_file():
        files = [p for p in files if not p.samefile(besides)]
    found = [p.name for p in files]
    rows = len(read_metrics(run_dir / METRICS))
    return found + ([f"{METRICS} ({rows} epoch(s))"] if rows else [])


def start(trainer: Trainer, env: Env, resume: bool, auto_resume: bool) -> None:
    """Rank 0 decides: new run, or resume from its last.pt; every rank gets its decision and state."""
    last = trainer.run_dir / checkpoint.LAST
    verdict: tuple[str, object] = ("new", None)
    if env.main:
        try:
            why = folder_refusal(trainer.run_dir, resume, auto_resume)
            if why:
                verdict = ("error", why)
            elif resume or (auto_resume and last.is_file()):
                state = checkpoint.load(last)
                why = trainer.refusal(state, last, "--resume" if resume else "--auto-resume")
                verdict = ("error", why) if why else ("resume", state)
        except checkpoint.CheckpointError as e:
            # not those that are last.pt under another name (--keep's hard links): the same bytes
            others = [n for n in trained_here(trainer.run_dir, besides=last) if n.endswith(".pt")]
            also = f"; its other checkpoints: {', '.join(others)} ({_COPY})" if others else ""
            verdict = ("error", f"{e}{also}")
    kind, payload = broadcast(verdict, env)
    if kind == "error":
        raise TrainError(payload if env.main else f"rank 0 refused to start: {payload}")
    if kind == "resume":
        trainer.restore(payload, last)
