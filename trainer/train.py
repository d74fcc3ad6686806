"""`alextrain run`: the training loop, on one device, two GPUs (model parallel), or many (DDP).

Process layout: torchrun starts one process per GPU (or per pair of GPUs with
`--model-parallel 2`, the paper's layout: tower 0 on GPU 2r, tower 1 on GPU 2r+1). Data
parallelism is DDP over all processes (NCCL on GPUs, gloo on CPUs); multi-node is torchrun's
rendezvous. Each rank reads its own part of the shards (see pipeline/loader.py).

Exact resume: a checkpoint (at an epoch's end, or every `--checkpoint-every` steps) holds the
model, the optimiser, the schedule, the position (epoch, step in it) and the partial epoch's
metric sums. Every epoch's data order and augmentation are seeded from (seed, epoch, rank), and
the loader can start an epoch at any step (`TrainLoader.epoch(e, start_step)`); dropout is
reseeded each step from (seed, epoch, step, rank). So a run killed at any point and resumed from
its last checkpoint repeats exactly what the uninterrupted run would have done from there on.

Many processes: rank 0 alone reads and writes the run folder. It decides whether to resume,
reads the checkpoint and broadcasts it, so the other ranks (other hosts, whose runs folder may
not be shared) start from the same weights, position and schedule; before training, every rank
checks that its settings and dataset agree with rank 0's.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipeline.loader import EvalLoader, LoaderOptions, TrainLoader, epoch_seed
from shards import layout
from shards.reader import classes_without_samples, default_val_split, load_classes, load_dataset
from shards.verify import preflight
from trainer import checkpoint, finetune
from trainer.config import TrainConfig
from trainer.errors import TrainError
from trainer.evaluate import autocast, evaluate
from trainer.guard import check as check_finite
from trainer.guard import mark as mark_nonfinite
from trainer.metrics import METRICS
from trainer.model import build_model
from trainer.optim import PaperSGD, PlateauSchedule, StepSchedule, param_groups, set_lr
from trainer.stopping import lost_peers

LOG_EVERY = 20  # steps between reads of the on-device loss sums (each read waits for the device)
DIE_ENV = "ALEXTRAIN_TEST_DIE"  # tests only: "step:K" or "save:K" -> SIGKILL self (see _maybe_die)


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    devices: list[torch.device]  # this process's devices: 1, or 2 with model parallel

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(cfg: TrainConfig) -> Env:
    """Devices and (under torchrun) the process group."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda, but no CUDA GPU is visible")
    per_proc = cfg.model_parallel
    if want_cuda:
        need = (local + 1) * per_proc
        have = torch.cuda.device_count()
        if need > have:
            raise TrainError(
                f"local rank {local} with --model-parallel {per_proc} needs {need} GPUs, {have} visible"
            )
        devices = [torch.device("cuda", local * per_proc + i) for i in range(per_proc)]
        torch.cuda.set_device(devices[0])
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    else:
        if per_proc > 1 and cfg.device != "cpu":
            raise TrainError(f"--model-parallel {per_proc} needs {per_proc} GPUs; none is visible")
        devices = [torch.device("cpu")] * per_proc
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Env(rank, world, local, devices)


def resolve_data(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """Fill in num_classes, val_split and crop from the dataset and check them against it.

    Returns the config and the dataset's fingerprint (what a resumed run must find again).
    """
    data = Path(cfg.data)
    meta = load_dataset(data)
    splits = meta["splits"]
    if cfg.train_split not in splits:
        raise TrainError(f"{data}: no {cfg.train_split} split (have: {', '.join(sorted(splits))})")
    names = load_classes(data)
    classes = len(names)
    empty = classes_without_samples(data, cfg.train_split, names)
    if empty:  # an output no image ever trains
        raise TrainError(
            f"{data}: {len(empty)} class(es) have no {cfg.train_split} image (e.g. {empty[0]!r}: none was "
            "found or every one was rejected when sharding); add or fix their images, or remove "
            "their folders, then re-shard"
        )
    if cfg.num_classes is None:
        cfg.num_classes = classes
    elif cfg.num_classes != classes:
        raise TrainError(
            f"--num-classes (num_classes) = {cfg.num_classes}: the dataset {data} has {classes} classes"
        )
    if cfg.val_split is None:
        cfg.val_split = default_val_split(meta)
    elif cfg.val_split not in splits:
        raise TrainError(f"--val-split (val_split) = {cfg.val_split!r}: {data} has no such split")
    if cfg.val_split is None and cfg.schedule == "plateau":
        raise TrainError(
            f"{data} has no val, validation or test split, so the plateau schedule would never drop "
            "the lr; pass --schedule step --lr-steps 30,60,80 (the paper's drops fell near those epochs)"
        )
    size = meta["size"]
    if cfg.crop is None:
        cfg.crop = 224 if cfg.arch == "alexnet" else size  # the paper's crop; cifar: the stored size
    if cfg.crop > size:
        raise TrainError(f"--crop (crop) = {cfg.crop}: larger than the stored images ({size}px) of {data}")
    if not (data / layout.STATS_JSON).is_file():
        raise TrainError(f"{data}/stats.json: missing; run `alexprep pca-stats {data}` first")
    fingerprint = {
        "size": size,
        "classes": classes,
        "classes_sha256": hashlib.sha256((data / layout.CLASSES_JSON).read_bytes()).hexdigest(),
        "splits": {k: splits[k].get("written") for k in sorted(splits)},
        # the images, their labels and order (plan_sha256), their sharding and JPEG quality: other
        # images with the same classes, or a re-shard with another --seed, --shard-size or
        # --quality, is another dataset to --resume (another data order, other pixels)
        **{k: meta.get(k) for k in ("plan_sha256", "shard_size", "quality")},
    }
    return cfg, fingerprint


def dataset_change(saved: object, now: dict, data: Path) -> str:
    """What differs between a checkpoint's dataset fingerprint and this run's, as one clause."""
    saved = saved if isinstance(saved, dict) else {}
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    what = ", ".join(
        "its images or their order (plan_sha256 in dataset.json)" if k == "plan_sha256" else k for k in keys
    )
    return f"the dataset ({data} is not the one the run was trained on: {what} differ)"


def loader_options(cfg: TrainConfig, env: Env, batch_size: int | None = None) -> LoaderOptions:
    backend = cfg.loader
    if backend == "auto":
        try:
            import nvidia.dali  # noqa: F401

            backend = "dali"
        except ImportError:
            backend = "reference"
    return LoaderOptions(
        batch_size=batch_size or cfg.batch_size,
        device="cuda" if env.devices[0].type == "cuda" else "cpu",
        backend=backend,
        num_threads=cfg.num_threads,
        mmap=cfg.mmap,
        seed=cfg.seed,
        lighting=cfg.lighting,
        mirror=cfg.mirror,
        lighting_scale_div=cfg.lighting_scale_div,
        normalization=cfg.normalization,
        crop=cfg.crop,
        rank=env.rank,
        world=env.world,
    )


def build(cfg: TrainConfig, env: Env) -> nn.Module:
    model = build_model(cfg.model_config())
    if cfg.model_parallel > 1:
        if cfg.arch != "alexnet" or cfg.towers != cfg.model_parallel:
            raise TrainError("--model-parallel 2 needs the two-tower alexnet")
        model.place(env.devices)
    else:
        model.to(env.devices[0])
    if env.devices[0].type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_schedule(cfg: TrainConfig) -> PlateauSchedule | StepSchedule:
    if cfg.schedule == "step":
        return StepSchedule(lr=cfg.lr, base_lr=cfg.lr, steps=tuple(cfg.lr_steps or ()))
    return PlateauSchedule(lr=cfg.lr, patience=cfg.patience, max_drops=cfg.max_drops)


class Metrics:
    """metrics.jsonl (one line per finished epoch), and TensorBoard when it is installed.

    Only rank 0 writes. The file is rewritten at start from the checkpoint's history (empty for a
    new run), so a run killed between an epoch's line and its checkpoint never lists it twice.
    """

    def __init__(self, run: Path, enabled: bool, history: list[dict]):
        self.path, self.enabled, self.tb = run / METRICS, enabled, None
        if not enabled:
            return
        layout.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in history).encode())
        if importlib.util.find_spec("tensorboard") is not None:  # optional extra
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=len(history) or None)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with layout.writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()


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
        t = self.totals(world)
        return {"per_rank": t, "seconds": seconds}

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


def dropout_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Dropout's seed for one step: resuming at any step replays the same masks."""
    return (epoch_seed(seed, epoch, rank) * 1_000_003 + step) % (2**63 - 1)


def _maybe_die(event: str, count: int) -> None:
    """Tests only: rank 0 SIGKILLs itself at an exact point, as a preempted host would be."""
    if os.environ.get(DIE_ENV) == f"{event}:{count}" and int(os.environ.get("RANK", 0)) == 0:
        os.kill(os.getpid(), signal.SIGKILL)


class Trainer:
    """The training state of one process and the one way it is checkpointed."""

    def __init__(self, cfg: TrainConfig, env: Env, fingerprint: dict, model: nn.Module):
        self.cfg, self.env, self.fingerprint, self.model = cfg, env, fingerprint, model
        self.opt = PaperSGD(
            param_groups(model, cfg.weight_decay, cfg.decay_biases), lr=cfg.lr, momentum=cfg.momentum
        )
        self.schedule = make_schedule(cfg)
        self.pos = Position()
        self.run_dir = Path(cfg.out)
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
            "model_config": self.cfg.model_config().to_dict(),
            "dataset": self.fingerprint,
            "world": self.env.world,
        }

    def save(self, seconds: float = 0.0, best: bool = False) -> None:
        """Rank 0 writes the checkpoint of the current position (every rank calls this)."""
        # never a non-finite state as last.pt or best.pt (all ranks check together)
        check_finite(self.pos.sums.bad_step, self.model, self.pos.epoch, self.pos.epoch_step, self.env.world)
        sums = self.pos.sums.state(self.env.world, seconds)  # a collective: every rank takes part
        if not self.env.main:
            return
        state = self.state(sums)
        self.saves += 1
        if os.environ.get(DIE_ENV) == f"save:{self.saves}":  # tests: die with a half-written file
            layout.tmp_path(self.run_dir / checkpoint.LAST).write_bytes(b"PK\x03\x04 partial")
            _maybe_die("save", self.saves)
        checkpoint.save_run(self.run_dir, state, keep=self.cfg.keep, best=best)

    def refusal(self, state: dict, path: Path) -> str | None:
        """Why this run cannot continue `state`, or None (rank 0 checks; all ranks are told)."""
        try:
            checkpoint.check_state(state, self.model, path)
        except checkpoint.CheckpointError as e:
            return str(e)
        changed = checkpoint.config_changes(state["config"], self.cfg.to_dict())
        if state["dataset"] != self.fingerprint:
            changed.append(dataset_change(state["dataset"], self.fingerprint, Path(self.cfg.data)))
        if state["world"] != self.env.world:
            changed.append(f"the process count (checkpoint {state['world']}, now {self.env.world})")
        if changed:
            return f"{path}: --resume with other settings than the run's: " + "; ".join(changed)
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


def _start(trainer: Trainer, env: Env, resume: bool, auto_resume: bool) -> None:
    """Rank 0 decides: new run, or resume from its last.pt; every rank gets its decision and state."""
    last = trainer.run_dir / checkpoint.LAST
    verdict: tuple[str, object] = ("new", None)
    if env.main:
        try:
            if auto_resume:
                resume = last.is_file()
            if resume:
                state = checkpoint.load(last)
                why = trainer.refusal(state, last)
                verdict = ("error", why) if why else ("resume", state)
            elif last.exists():
                verdict = (
                    "error",
                    f"{trainer.run_dir}: holds a run already; pass --resume to continue it, "
                    "or use a new --out",
                )
        except checkpoint.CheckpointError as e:
            verdict = ("error", str(e))
    if env.world > 1:
        box = [verdict]
        dist.broadcast_object_list(box, src=0)
        verdict = box[0]
    kind, payload = verdict
    if kind == "error":
        raise TrainError(payload if env.main else f"rank 0 refused to start: {payload}")
    if kind == "resume":
        trainer.restore(payload, last)


def _agree(cfg: TrainConfig, fingerprint: dict, env: Env) -> None:
    """Every rank checks, before any work, that its settings and data are rank 0's."""
    if env.world == 1:
        return
    mine = {k: v for k, v in cfg.to_dict().items() if k not in ("data", "out")}
    mine["dataset"] = fingerprint
    everyone: list[dict] = [{}] * env.world
    dist.all_gather_object(everyone, mine)
    for rank, theirs in enumerate(everyone[1:], start=1):
        diff = sorted(k for k in set(theirs) | set(everyone[0]) if theirs.get(k) != everyone[0].get(k))
        if diff:
            raise TrainError(f"rank {rank} disagrees with rank 0 on: {', '.join(diff)}")


def train_epoch(
    trainer: Trainer, net: nn.Module, loader: TrainLoader, epoch: int, steps: int, bar: bool
) -> Sums:
    """Steps `pos.epoch_step`..`steps - 1` of `epoch` (all of them unless resuming mid-epoch)."""
    cfg, env, pos, opt = trainer.cfg, trainer.env, trainer.pos, trainer.opt
    net.train()
    loss_fn = nn.CrossEntropyLoss()
    sums, start, t0 = pos.sums, pos.epoch_step, time.perf_counter()
    seen0 = sums.seen
    progress = tqdm(
        total=steps, initial=start, disable=not bar, desc=f"epoch {epoch}", unit="step", leave=False
    )
    lr = opt.param_groups[0]["lr"]
    for k, (x, y) in enumerate(loader.epoch(epoch, start_step=start), start=start):
        if k == steps:
            break
        torch.manual_seed(dropout_seed(cfg.seed, epoch, k, env.rank))
        if env.devices[0].type == "cuda" and cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(env.devices[0], cfg.amp):
            logits = net(x)
            y = y.to(logits.device, non_blocking=True)
            loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums.add(loss, logits, y, k)
        pos.epoch_step, pos.step = k + 1, pos.step + 1
        if (k + 1) % LOG_EVERY == 0:  # the only host read of the sums within an epoch
            total = sums.loss.item()  # a sum of the losses: NaN or inf once any one was
            if env.world > 1 or not math.isfinite(total):  # DDP: every rank decides together
                check_finite(sums.bad_step, None, epoch, k, env.world)
            if bar:
                rate = (sums.seen - seen0) * env.world / (time.perf_counter() - t0)
                progress.set_postfix(loss=f"{total / (k + 1):.4f}", lr=f"{lr:.2g}", img_s=f"{rate:.0f}")
        progress.update()
        if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and k + 1 < steps:
            trainer.save(sums.seconds + time.perf_counter() - t0)
        _maybe_die("step", pos.step)
    progress.close()
    sums.seconds += time.perf_counter() - t0
    return sums


def run(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    auto_resume: bool = False,
    given: set[str] | None = None,
) -> list[dict]:
    """Train to `cfg.epochs`; returns the metrics rows of the epochs finished by this call.

    `resume`: continue the run in `cfg.out` (refused when a setting other than those in
    checkpoint.RESUMABLE differs); `auto_resume`: resume if rank 0 finds a checkpoint.
    `given`: the settings the user set explicitly (for refusing options the arch ignores).
    Every setting is checked before anything is written.
    """
    cfg.check(given)
    env = setup(cfg)
    cfg, fingerprint = resolve_data(cfg)
    splits = [cfg.train_split, *([cfg.val_split] if cfg.val_split else [])]
    # a damaged shard, named now; the hashing pass (when due) runs once per host, not per process
    host_main = env.local_rank == 0
    say = (lambda line: print(line, flush=True)) if host_main else None
    preflight(Path(cfg.data), splits, cfg.verify_data == "full", hash_files=host_main, say=say)
    _agree(cfg, fingerprint, env)
    data, run_dir = Path(cfg.data), Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"--out {run_dir}: exists and is not a folder")
    data_real, out_real = data.resolve(), run_dir.resolve()
    inside = out_real.relative_to(data_real).parts if out_real.is_relative_to(data_real) else None
    if inside is not None and (not inside or inside[0] in load_dataset(data)["splits"]):
        # checkpoints among the shards: verify, re-sharding and the loaders own those folders
        raise TrainError(
            f"--out {run_dir}: is the dataset folder or one of its splits; use a folder of its own"
        )
    with _run_lock(run_dir, env), lost_peers(env.rank, env.world, run_dir):
        return _train_locked(cfg, env, fingerprint, data, run_dir, resume, auto_resume, progress)


@contextlib.contextmanager
def _run_lock(run_dir: Path, env: Env) -> Iterator[None]:
    """One `alextrain run` per --out (rank 0 holds a flock on OUT/.alextrain.lock): two runs on
    one folder would each append every epoch to metrics.jsonl and overwrite each other's
    checkpoints. A folder this call created is removed again if the run stops before writing."""
    if not env.main:
        yield
        return
    created = not run_dir.exists()
    layout.ensure_dir(run_dir)
    try:
        with layout.NodeLock(run_dir, 0, name=".alextrain.lock", who="`alextrain run`", what="--out"):
            yield
    finally:
        if created and [p.name for p in run_dir.iterdir()] == [".alextrain.lock"]:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train_locked(
    cfg: TrainConfig,
    env: Env,
    fingerprint: str,
    data: Path,
    run_dir: Path,
    resume: bool,
    auto_resume: bool,
    progress: bool,
) -> list[dict]:
    """The run itself, under the --out lock."""
    train = TrainLoader(data, loader_options(cfg, env), split=cfg.train_split)
    val = EvalLoader(data, loader_options(cfg, env), split=cfg.val_split) if cfg.val_split else None
    steps = min(cfg.steps_per_epoch or train.steps_per_epoch, train.steps_per_epoch)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    trainer = Trainer(cfg, env, fingerprint, build(cfg, env))
    _start(trainer, env, resume, auto_resume)
    if cfg.init_from and trainer.pos.step == 0 and env.main:  # fine-tuning; DDP broadcasts rank 0's weights
        tqdm.write(finetune.describe(finetune.init_from(trainer.model, cfg.init_from, cfg.model_config())))
    if env.main:
        layout.ensure_dir(run_dir)
        layout.remove_stale_tmp(run_dir)  # half-written checkpoints of a killed run
        layout.write_json(run_dir / "config.json", cfg.to_dict())
        _announce(cfg, env, steps, trainer.pos)
    metrics = Metrics(run_dir, env.main, trainer.pos.history)

    net = trainer.model
    if env.world > 1:
        ids = [env.devices[0]] if env.devices[0].type == "cuda" and cfg.model_parallel == 1 else None
        net = nn.parallel.DistributedDataParallel(trainer.model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    rows, pos, schedule = [], trainer.pos, trainer.schedule
    for epoch in range(pos.epoch, cfg.epochs):
        schedule.begin(epoch)
        set_lr(trainer.opt, schedule.lr)
        row = {"epoch": epoch, "lr": schedule.lr}
        sums = train_epoch(trainer, net, train, epoch, steps, progress and env.main)
        check_finite(sums.bad_step, net, epoch, pos.epoch_step, env.world)  # before eval and saving
        row.update(sums.epoch_row(env.world, steps))
        best = False
        if val is not None:
            ev = evaluate([net], val, cfg.amp)
            row.update({f"val_{k}": v for k, v in ev.items()})
            row["lr_dropped"] = schedule.update(ev["top1_err"])
            best = pos.best_top1_err is None or ev["top1_err"] < pos.best_top1_err
            if best:
                pos.best_top1_err = ev["top1_err"]
        row["step"] = pos.step
        rows.append(row)
        pos.history.append(row)
        pos.epoch, pos.epoch_step, pos.sums = epoch + 1, 0, Sums()
        trainer.save(best=best)  # first: metrics.jsonl never lists an epoch without its checkpoint
        metrics.write(row)
        if progress and env.main:
            tqdm.write(_line(row))
        if env.world > 1:
            dist.barrier()
    return rows


def _announce(cfg: TrainConfig, env: Env, steps: int, pos: Position) -> None:
    """What a user must know before a long run: the global batch, the lr and where it starts."""
    if cfg.schedule == "step":
        schedule = f"/10 at epochs {','.join(map(str, cfg.lr_steps or []))}"
    elif cfg.max_drops == 0:
        schedule = "fixed: --max-drops 0"
    else:
        schedule = f"/10 on plateaus of {cfg.val_split!r} error, at most {cfg.max_drops} times"
    where = f"resuming at epoch {pos.epoch} step {pos.epoch_step}" if pos.step else "starting"
    print(
        f"{where}: global batch {cfg.batch_size * env.world} ({cfg.batch_size} per process x {env.world}), "
        f"lr {cfg.lr:g} ({schedule}), {steps} steps per epoch, {cfg.epochs} epochs",
        flush=True,
    )


def _line(row: dict) -> str:
    parts = [
        f"epoch {row['epoch']}",
        f"loss {row['train_loss']:.4f}",
        f"lr {row['lr']:.2g}",
        f"{row['img_per_s']:.0f} img/s",
    ]
    if "val_top1_err" in row:
        parts += [f"val top-1 err {row['val_top1_err']:.4f}", f"top-5 err {row['val_top5_err']:.4f}"]
    return " | ".join(parts)
