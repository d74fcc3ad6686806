"""`alextrain run`: the training loop and `run()`, which sets it up.

The pieces it uses each have a module: trainer/config.py (the settings, checked before any
work), trainer/distributed.py (ranks, devices, the process group, the per-process batch),
trainer/runstate.py (the checkpointed state and the resume protocol), trainer/metrics.py
(metrics.jsonl). Each rank reads its own part of the shards (pipeline/loader.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipeline.augment import estimate_note
from pipeline.loader import EvalLoader, Feed, TrainLoader, epoch_seed
from preprocess import paper
from shards import layout
from shards.reader import (
    classes_without_samples,
    default_val_split,
    load_classes,
    load_dataset,
    require_images,
)
from shards.verify import preflight
from trainer import checkpoint, finetune, hosts
from trainer.config import PER_HOST, TrainConfig
from trainer.distributed import Env, agree, setup
from trainer.errors import TrainError
from trainer.evaluate import autocast, evaluate
from trainer.faults import maybe_die
from trainer.guard import check as check_finite
from trainer.metrics import METRICS, MetricsWriter, restore_metrics
from trainer.model import build_model
from trainer.optim import describe_drop, set_lr
from trainer.runstate import Position, Sums, Trainer, data_identity, folder_refusal, start
from trainer.stopping import lost_peers, lost_workers

LOCK = ".alextrain.lock"  # in --out: held by the run that writes there

MIN_CIFAR_CROP = 16  # the CIFAR net's three 3x3 stride-2 poolings leave nothing of a smaller input
LOG_EVERY = 20  # steps between reads of the on-device loss sums (each read waits for the device)


def resolve_data(cfg: TrainConfig) -> tuple[TrainConfig, dict]:
    """Fill in num_classes, val_split and crop from the dataset and check them against it.

    Returns the config and the dataset's fingerprint (what a resumed run must find again).
    """
    data, r, m = Path(cfg.run.data), cfg.run, cfg.model
    meta = load_dataset(data)
    splits = meta["splits"]
    if r.train_split not in splits:
        raise TrainError(f"{data}: no {r.train_split} split (have: {', '.join(sorted(splits))})")
    names = load_classes(data)
    classes = len(names)
    empty = classes_without_samples(data, r.train_split, names)
    if empty:  # an output no image ever trains
        raise TrainError(
            f"{data}: {len(empty)} class(es) have no {r.train_split} image (e.g. {empty[0]!r}: none was "
            "found or every one was rejected when sharding); add or fix their images, or remove "
            "their folders, then re-shard"
        )
    if m.num_classes is not None and m.num_classes != classes:
        raise TrainError(
            f"--num-classes (num_classes) = {m.num_classes}: the dataset {data} has {classes} classes"
        )
    val = r.val_split
    if val is None:
        val = default_val_split(meta)
    elif val not in splits:
        raise TrainError(f"--val-split (val_split) = {val!r}: {data} has no such split")
    if val is not None:  # an empty train split is refused above: every class has no image
        how = "" if r.val_split else "; name another held-out split with --val-split, or re-shard"
        require_images(data, meta, val, how)
    if val is None and cfg.optim.schedule == "plateau":
        raise TrainError(
            f"{data} has no val, validation or test split, so the plateau schedule would never drop "
            "the lr; pass --schedule step --lr-steps 30,60,80 (three fixed drops in ~90 epochs: the paper's "
            "count)"
        )
    size = meta["size"]
    crop = m.crop or (paper.CROP_SIZE if m.arch == "alexnet" else size)  # cifar: the stored size
    if crop > size:
        raise TrainError(f"--crop (crop) = {crop}: larger than the stored images ({size}px) of {data}")
    if crop < MIN_CIFAR_CROP:  # cifar's default crop is the stored size (alexnet's is checked above)
        raise TrainError(
            f"{data}: images stored at {size}px; --arch cifar needs {MIN_CIFAR_CROP}px or more "
            "(its three 3x3/2 poolings); shard with --size 32"
        )
    if not (data / layout.STATS_JSON).is_file():
        raise TrainError(f"{data}/stats.json: missing; run `alexprep pca-stats {data}` first")
    fingerprint = {
        **data_identity(data, meta),  # size, classes, statistics: what eval checks too
        "classes": classes,
        "splits": {k: splits[k].get("written") for k in sorted(splits)},
        # the images, their labels and order (plan_sha256), their sharding and JPEG quality: other
        # images with the same classes, or a re-shard with another --seed, --shard-size or
        # --quality, is another dataset to --resume (another data order, other pixels)
        **{k: meta.get(k) for k in ("plan_sha256", "shard_size", "quality")},
    }
    # recorded absolute: `--resume`, predict and neighbors find the shards from any folder, and
    # `--config RUN/config.json` run elsewhere writes to the run it names, not to a new one there
    here, out = os.path.abspath(data), os.path.abspath(r.out) if r.out else r.out
    return cfg.replace(data=here, out=out, num_classes=classes, val_split=val, crop=crop), fingerprint


def feed(cfg: TrainConfig, env: Env) -> Feed:
    """What this process's loaders make: its share of the global batch, on its device."""
    return Feed(
        batch_size=env.batch,
        crop=cfg.model.input_size,
        seed=cfg.run.seed,
        device="cuda" if env.cuda else "cpu",
        rank=env.rank,
        world=env.world,
    )


def build(cfg: TrainConfig, env: Env) -> nn.Module:
    model = build_model(cfg.model)
    if cfg.run.model_parallel > 1:
        model.place(env.devices)
    else:
        model.to(env.devices[0])
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def dropout_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Dropout's seed for one step: resuming at any step replays the same masks."""
    return (epoch_seed(seed, epoch, rank) * 1_000_003 + step) % (2**63 - 1)


def warmup_lr(cfg: TrainConfig, step: int, steps_per_epoch: int, lr: float) -> float:
    """Goyal et al.'s gradual warm-up: from --lr to the scaled lr over --warmup-epochs, per step
    (a function of the step alone, so a resumed run sets the same lr)."""
    o = cfg.optim
    ramp = o.warmup_epochs * steps_per_epoch
    if step >= ramp:
        return lr
    return o.lr + (lr - o.lr) * step / ramp


def train_epoch(
    trainer: Trainer, net: nn.Module, loader: TrainLoader, epoch: int, steps: int, bar: bool
) -> Sums:
    """Steps `pos.epoch_step`..`steps - 1` of `epoch` (all of them unless resuming mid-epoch)."""
    cfg, env, pos, opt = trainer.cfg, trainer.env, trainer.pos, trainer.opt
    net.train()
    loss_fn = nn.CrossEntropyLoss()
    sums, first, t0 = pos.sums, pos.epoch_step, time.perf_counter()
    seen0 = sums.seen
    progress = tqdm(
        total=steps, initial=first, disable=not bar, desc=f"epoch {epoch}", unit="step", leave=False
    )
    lr = opt.param_groups[0]["lr"]
    warming = cfg.optim.warmup_epochs > epoch
    for k, (x, y) in enumerate(loader.epoch(epoch, start_step=first), start=first):
        if k == steps:
            break
        torch.manual_seed(dropout_seed(cfg.run.seed, epoch, k, env.rank))
        if warming:
            set_lr(opt, warmup_lr(cfg, pos.step, steps, lr))
        if cfg.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(env.devices[0], cfg.run.precision):
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
        every = cfg.run.checkpoint_every
        if every and pos.step % every == 0 and k + 1 < steps:
            trainer.saves += 1
            maybe_die("save", trainer.saves, layout.tmp_path(trainer.run_dir / checkpoint.LAST))
            trainer.save(sums.seconds + time.perf_counter() - t0)
        maybe_die("step", pos.step)
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
    """Train to `cfg.optim.epochs`; returns the metrics rows of the epochs finished by this call.

    `resume`: continue the run in `cfg.run.out` (refused when a setting other than those in
    config.RESUMABLE differs); `auto_resume`: resume if rank 0 finds a checkpoint.
    `given`: the settings the user set explicitly (for refusing options the arch ignores).
    Every setting is checked before anything is written or hashed.
    """
    cfg.check(given)
    env = setup(cfg)
    cfg, fingerprint = resolve_data(cfg)
    r = cfg.run
    splits = [r.train_split, *([r.val_split] if r.val_split else [])]
    data, run_dir = Path(r.data), Path(r.out)
    check_out(data, run_dir)
    why = folder_refusal(run_dir, resume, auto_resume) if env.main else None
    if why:  # said before an hour of hashing; start() decides for good, under the lock
        if run_dir.is_dir():  # said under the lock: a run writing there now is said instead
            with _lock(run_dir):
                raise TrainError(why)
        raise TrainError(why)
    host_main = env.local_rank == 0
    # rank 0's host only: on the others the run folder holds nothing but that record, by design,
    # and it must outlive a failed start (a restart after a lost peer would hash again)
    created = env.main and not run_dir.exists()
    try:
        say = (lambda line: print(line, flush=True)) if host_main else None
        keep = hosts.verified_record(run_dir)
        # a damaged shard, named now; the hashing pass (when due) runs once per host, not per
        # process, and its clean result is kept beside the run too (read-only shards keep none)
        full, bar = r.verify_data == "full", progress and host_main
        preflight(data, splits, full, hash_files=host_main, say=say, keep=keep, progress=bar)
        hosts.wait_for_hosts(hosts.dataset_bytes(data, splits), say)  # before any collective
        hosts.init_group(env.cuda)
        # each key its own, so that a host whose data differs is told which part (its stats.json...)
        data_keys = {f"dataset.{k}": v for k, v in fingerprint.items()}
        # and what `--loader auto` became on each host (DALI installed on some only). A GPU on
        # some hosts only cannot be told here: NCCL and gloo groups never meet in a collective
        ran = {"loader (resolved)": cfg.loader.resolved_backend()}
        agree({**{k: v for k, v in cfg.flat().items() if k not in PER_HOST}, **data_keys, **ran}, env)
        with _run_lock(run_dir, env), lost_peers(env.rank, env.world, run_dir), lost_workers(run_dir):
            return _train_locked(cfg, env, fingerprint, resume, auto_resume, progress)
    finally:
        if created:  # a folder this call made is removed again if the run stopped before writing
            _remove_unused(run_dir)


def check_out(data: Path, run_dir: Path) -> None:
    """--out is a folder of its own, not the dataset or one of its splits."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"--out {run_dir}: exists and is not a folder")
    data_real, out_real = data.resolve(), run_dir.resolve()
    inside = out_real.relative_to(data_real).parts if out_real.is_relative_to(data_real) else None
    if inside is not None and (not inside or inside[0] in load_dataset(data)["splits"]):
        # checkpoints among the shards: verify, re-sharding and the loaders own those folders
        raise TrainError(
            f"--out {run_dir}: is the dataset folder or one of its splits; use a folder of its own"
        )


@contextlib.contextmanager
def _run_lock(run_dir: Path, env: Env) -> Iterator[None]:
    """One `alextrain run` per --out (rank 0 holds a flock on OUT/.alextrain.lock): two runs on
    one folder would each append every epoch to metrics.jsonl and overwrite each other's
    checkpoints."""
    if not env.main:
        yield
        return
    layout.ensure_dir(run_dir)
    with _lock(run_dir):
        yield


def _lock(run_dir: Path) -> layout.NodeLock:
    """OUT/.alextrain.lock; taken while held elsewhere, it names the holder in its error."""
    return layout.NodeLock(run_dir, 0, name=LOCK, who="`alextrain run`", what="--out")


def _remove_unused(run_dir: Path) -> None:
    """Remove a run folder that holds nothing of a run: only the lock and this host's record of
    a clean hash pass (a refused or failed start must not leave a folder that looks like a run).
    Under the lock: a run that another process started in it meanwhile is left alone."""
    try:
        with _lock(run_dir):
            if {p.name for p in run_dir.iterdir()} <= {LOCK, hosts.VERIFIED_DIR}:
                shutil.rmtree(run_dir, ignore_errors=True)
    except (layout.LayoutError, OSError):
        pass  # held by another run, or already gone


def _train_locked(
    cfg: TrainConfig, env: Env, fingerprint: dict, resume: bool, auto_resume: bool, progress: bool
) -> list[dict]:
    """The run itself, under the --out lock."""
    data, run_dir, r = Path(cfg.run.data), Path(cfg.run.out), cfg.run
    train = TrainLoader(data, cfg.loader, feed(cfg, env), split=r.train_split, epochs=cfg.optim.epochs)
    val = EvalLoader(data, cfg.loader, feed(cfg, env), split=r.val_split) if r.val_split else None
    steps = min(r.steps_per_epoch or train.steps_per_epoch, train.steps_per_epoch)

    torch.manual_seed(r.seed)  # the same initial weights on every rank and every run
    trainer = Trainer(cfg, env, fingerprint, build(cfg, env))
    start(trainer, env, resume, auto_resume)
    if r.init_from and trainer.pos.step == 0 and env.main:  # fine-tuning; DDP broadcasts rank 0's weights
        tqdm.write(finetune.describe(finetune.init_from(trainer.model, r.init_from, cfg.model)))
    if env.main:  # half-written checkpoints of a killed run, finished (a kill at its last save) or not
        layout.ensure_dir(run_dir)
        layout.remove_stale_tmp(run_dir)
    if trainer.pos.epoch >= cfg.optim.epochs:  # finished: its config.json says what it was trained with
        if env.main and restore_metrics(run_dir, trainer.pos.history):  # its last line lost, or torn
            print(f"{run_dir / METRICS}: rewritten from {checkpoint.LAST}'s record of its epochs", flush=True)
        return []
    trainer.schedule.begin(trainer.pos.epoch)
    if env.main:
        layout.write_json(run_dir / "config.json", cfg.to_dict())
        print(announce(cfg, env, steps, trainer.pos, trainer.schedule.lr), flush=True)
    metrics = MetricsWriter(run_dir, env.main, trainer.pos.history)

    net = trainer.model
    if env.world > 1:
        ids = [env.devices[0]] if env.cuda and r.model_parallel == 1 else None
        net = nn.parallel.DistributedDataParallel(trainer.model, device_ids=ids)
    if r.compile:
        net = torch.compile(net)
    rows, pos, schedule = [], trainer.pos, trainer.schedule
    for epoch in range(pos.epoch, cfg.optim.epochs):
        schedule.begin(epoch)
        set_lr(trainer.opt, schedule.lr)
        row = {"epoch": epoch, "lr": schedule.lr}
        if epoch < cfg.optim.warmup_epochs:  # the lr its steps took: a ramp up to `lr`
            row["lr_warmup"] = [warmup_lr(cfg, epoch * steps + k, steps, schedule.lr) for k in (0, steps - 1)]
        sums = train_epoch(trainer, net, train, epoch, steps, progress and env.main)
        check_finite(sums.bad_step, net, epoch, pos.epoch_step, env.world)  # before eval and saving
        row.update(sums.epoch_row(env.world, steps))
        best = False
        if val is not None:
            ev = evaluate([net], val, r.precision)
            row.update({f"val_{k}": v for k, v in ev.items()})
            row["lr_dropped"] = schedule.update(ev["top1_err"])
            if row["lr_dropped"]:  # why, with the val errors that triggered it
                row["lr_drop"] = schedule.last_drop
            best = pos.best_top1_err is None or ev["top1_err"] < pos.best_top1_err
            if best:
                pos.best_top1_err = ev["top1_err"]
        row["step"] = pos.step
        rows.append(row)
        pos.history.append(row)
        pos.epoch, pos.epoch_step, pos.sums = epoch + 1, 0, Sums()
        trainer.saves += 1
        maybe_die("save", trainer.saves, layout.tmp_path(run_dir / checkpoint.LAST))
        trainer.save(best=best)  # first: metrics.jsonl never lists an epoch without its checkpoint
        metrics.write(row)
        if progress and env.main:
            tqdm.write(_line(row))
        if env.world > 1:
            dist.barrier()
    return rows


def announce(cfg: TrainConfig, env: Env, steps: int, pos: Position, lr_now: float | None = None) -> str:
    """What a user must know before a long run: the global batch, the lr (and, resumed after a
    drop, the lr it goes on with), precision, where it starts."""
    o = cfg.optim
    if o.schedule == "step":
        schedule = f"/10 at epochs {','.join(map(str, o.lr_steps or []))}"
    elif o.max_drops == 0:
        schedule = "fixed: --max-drops 0"
    else:
        schedule = f"/10 on plateaus of {cfg.run.val_split!r} error, at most {o.max_drops} times"
    lr = f"lr {o.base_lr():g}"
    if o.lr_scaling == "linear":
        lr += f" (= {o.lr:g} x {o.global_batch}/128, linear scaling)"
    if o.warmup_epochs:
        lr += f", warm-up from {o.lr:g} over {_count(o.warmup_epochs, 'epoch')}"
    if pos.step and lr_now is not None and not math.isclose(lr_now, o.base_lr()):
        lr += f", now {lr_now:g} after its drops"
    where = f"resuming at epoch {pos.epoch} step {pos.epoch_step}" if pos.step else "starting"
    line = (
        f"{where}: global batch {o.global_batch} ({env.batch} per process x {env.world}), {lr} ({schedule}), "
        f"{cfg.run.precision}, {_count(steps, 'step')} per epoch, {_count(o.epochs, 'epoch')}"
    )
    if o.global_batch != paper.BATCH_SIZE and o.lr_scaling == "none":
        line += f"\nnote: global batch {o.global_batch} is not the paper's 128 and the lr is not rescaled"
        line += " (see --lr-scaling linear --warmup-epochs 5, docs/runbook.md)"
    estimate = estimate_note(Path(cfg.run.data))
    return line + (f"\nnote: {estimate}" if estimate else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _line(row: dict) -> str:
    parts = [
        f"epoch {row['epoch']}",
        f"loss {row['train_loss']:.4f}",
        f"lr {row['lr']:.2g}",
        f"{row['img_per_s']:.0f} img/s",
    ]
    if "val_top1_err" in row:
        parts += [f"val top-1 err {row['val_top1_err']:.4f}", f"top-5 err {row['val_top5_err']:.4f}"]
    if row.get("lr_drop"):
        parts.append(describe_drop(row["lr_drop"]))
    return " | ".join(parts)
