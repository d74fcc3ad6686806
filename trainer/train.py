"""`alextrain run`: the training loop, on one device, two GPUs (model parallel), or many (DDP).

Process layout: torchrun starts one process per GPU (or per pair of GPUs with
`--model-parallel 2`, the paper's layout: tower 0 on GPU 2r, tower 1 on GPU 2r+1). Data
parallelism is DDP over all processes (NCCL on GPUs, gloo on CPUs); multi-node is torchrun's
rendezvous. Each rank reads its own part of the shards (see pipeline/loader.py).

Exact resume: the state at an epoch boundary is the model, the optimiser, the schedule and the
epoch number; every epoch's randomness (data order, crops, flips, lighting, dropout) is seeded
from (seed, epoch, rank). So a run killed at any point and resumed from its last checkpoint
repeats exactly what the uninterrupted run would have done from that epoch on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipeline.loader import EvalLoader, LoaderOptions, TrainLoader, epoch_seed
from shards import layout
from shards.reader import load_dataset
from trainer import checkpoint, finetune
from trainer.config import TrainConfig
from trainer.evaluate import autocast, evaluate
from trainer.model import build_model
from trainer.optim import PaperSGD, PlateauSchedule, param_groups, set_lr


class TrainError(Exception):
    """A user-facing problem with the run's setup (data, devices, checkpoint)."""


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
    else:
        if per_proc > 1 and cfg.device != "cpu":
            raise TrainError(f"--model-parallel {per_proc} needs {per_proc} GPUs; none is visible")
        devices = [torch.device("cpu")] * per_proc
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Env(rank, world, local, devices)


def resolve_data(cfg: TrainConfig) -> TrainConfig:
    """Fill in num_classes and val_split from the dataset; check stats exist."""
    data = Path(cfg.data)
    meta = load_dataset(data)
    if cfg.train_split not in meta["splits"]:
        raise TrainError(f"{data}: no {cfg.train_split} split")
    if cfg.num_classes is None:
        cfg.num_classes = len(json.loads((data / layout.CLASSES_JSON).read_text()))
    if cfg.val_split is None:
        cfg.val_split = next((s for s in ("val", "validation", "test") if s in meta["splits"]), None)
    if not (data / layout.STATS_JSON).is_file():
        raise TrainError(f"{data}/stats.json: missing; run `alexprep pca-stats {data}` first")
    return cfg


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
        seed=cfg.seed,
        lighting=cfg.lighting,
        mirror=cfg.mirror,
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


class Metrics:
    """metrics.jsonl (one line per epoch), and TensorBoard when it is installed."""

    def __init__(self, run: Path, enabled: bool):
        self.path, self.enabled, self.tb = run / "metrics.jsonl", enabled, None
        if enabled and importlib.util.find_spec("tensorboard") is not None:  # optional extra
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """On resume, drop lines of epochs after the checkpoint (they will be redone)."""
    if path.is_file():
        rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["epoch"] < epochs_done]
        path.write_text("".join(r + "\n" for r in rows))


def train_epoch(model, opt, loader, epoch: int, cfg: TrainConfig, env: Env, bar: bool) -> dict:  # noqa: ANN001
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    steps = (
        loader.steps_per_epoch
        if cfg.steps_per_epoch is None
        else min(cfg.steps_per_epoch, loader.steps_per_epoch)
    )
    total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
    progress = tqdm(total=steps, disable=not bar, desc=f"epoch {epoch}", unit="step", leave=False)
    lr = opt.param_groups[0]["lr"]
    for step, (x, y) in enumerate(loader.epoch(epoch)):
        if step == steps:
            break
        if env.devices[0].type == "cuda" and cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(env.devices[0], cfg.amp):
            logits = model(x)
            loss = loss_fn(logits.float(), y.to(logits.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss.item()
        correct += int((logits.argmax(1) == y.to(logits.device)).sum())
        seen += len(y)
        rate = seen * env.world / (time.perf_counter() - start)
        progress.set_postfix(loss=f"{total_loss / (step + 1):.4f}", lr=f"{lr:.2g}", img_s=f"{rate:.0f}")
        progress.update()
    progress.close()
    seconds = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(steps, 1),
        "train_top1_err": 1.0 - correct / max(seen, 1),
        "img_per_s": seen * env.world / seconds,
        "train_seconds": seconds,
        "steps": steps,
    }


def run(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> list[dict]:
    """Train to `cfg.epochs`; returns the metrics rows of the epochs run by this call."""
    env = setup(cfg)
    cfg = resolve_data(cfg)
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = Path(cfg.data)
    train = TrainLoader(data, loader_options(cfg, env), split=cfg.train_split)
    val = EvalLoader(data, loader_options(cfg, env), split=cfg.val_split) if cfg.val_split else None

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every run
    model = build(cfg, env)
    opt = PaperSGD(param_groups(model, cfg.weight_decay, cfg.decay_biases), lr=cfg.lr, momentum=cfg.momentum)
    schedule = PlateauSchedule(lr=cfg.lr, patience=cfg.patience, max_drops=cfg.max_drops)
    start_epoch, step = 0, 0
    last = run_dir / checkpoint.LAST
    if resume:
        state = checkpoint.load(last)
        checkpoint.check_model(state, cfg.model_config().to_dict(), last)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        if env.main:
            _truncate_metrics(run_dir / "metrics.jsonl", start_epoch)
    elif last.exists():
        raise TrainError(f"{run_dir}: holds a run already; pass --resume to continue it, or use a new --out")
    if cfg.init_from and not resume and env.main:  # fine-tuning; DDP broadcasts rank 0's weights
        tqdm.write(finetune.describe(finetune.init_from(model, cfg.init_from, cfg.model_config())))
    if env.main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    net = model
    if env.world > 1:
        ids = [env.devices[0]] if env.devices[0].type == "cuda" and cfg.model_parallel == 1 else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net)
    metrics, rows = Metrics(run_dir, env.main), []
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))  # dropout: a function of the epoch
        set_lr(opt, schedule.lr)
        row = {"epoch": epoch, "lr": schedule.lr}
        row.update(train_epoch(net, opt, train, epoch, cfg, env, progress and env.main))
        step += row["steps"]
        if val is not None:
            ev = evaluate([net], val, cfg.amp)
            row.update({f"val_{k}": v for k, v in ev.items()})
            row["lr_dropped"] = schedule.update(ev["top1_err"])
        row["step"] = step
        rows.append(row)
        metrics.write(row)
        if progress and env.main:
            tqdm.write(_line(row))
        if env.main:
            checkpoint.save(
                last,
                {
                    "model": checkpoint.cpu_state_dict(model),
                    "optimizer": opt.state_dict(),
                    "schedule": schedule.state_dict(),
                    "epoch": epoch,
                    "step": step,
                    "rng": {"torch": torch.get_rng_state(), "seed": cfg.seed},
                    "loader": {"next_epoch": epoch + 1, "seed": cfg.seed, "world": env.world},
                    "config": cfg.to_dict(),
                    "model_config": cfg.model_config().to_dict(),
                    "metrics": row,
                },
            )
        if env.world > 1:
            dist.barrier()
    return rows


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
