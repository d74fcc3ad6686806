"""Where a process runs: its rank, its devices, the process group, and the arithmetic it uses.

torchrun starts one process per GPU (or per pair of GPUs with `--model-parallel 2`, the paper's
layout: tower 0 on GPU 2r, tower 1 on GPU 2r+1) and sets RANK, WORLD_SIZE and LOCAL_RANK;
without torchrun a process is rank 0 of 1. Data parallelism is DDP over all processes (NCCL on
GPUs, gloo on CPUs; the group is created after the shard check, trainer/hosts.py). The global
batch (section 5: 128, all processes together) is split evenly among the processes here, so
every later step reads `env.batch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.config import TrainConfig
from trainer.errors import TrainError


@dataclass
class Env:
    rank: int
    world: int
    local_rank: int
    devices: list[torch.device]  # this process's devices: 1, or 2 with model parallel
    batch: int = 1  # this process's share of the global batch

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.devices[0].type == "cuda"


def per_process_batch(global_batch: int, world: int) -> int:
    """The global batch split evenly; an indivisible count is refused, naming both counts."""
    if global_batch % world:
        raise TrainError(
            f"--global-batch (global_batch) = {global_batch}: does not split evenly over {world} "
            f"processes; use a multiple of {world} (e.g. {global_batch // world * world or world})"
        )
    return global_batch // world


def set_precision(cfg: TrainConfig) -> None:
    """TF32 only when asked: torch's cuDNN convolutions default to TF32 on Ampere and later,
    which would make "fp32" (the paper's arithmetic) quietly something else."""
    allow_tf32(cfg.run.precision == "tf32")


def allow_tf32(on: bool) -> None:
    """TF32 for matmuls and cuDNN convolutions, both or neither (process-wide flags)."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def setup(cfg: TrainConfig) -> Env:
    """This process's devices and batch share, after every refusal that needs no data. The process
    group comes later, after the shard check (trainer/hosts.py: `init_group`)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    batch = per_process_batch(cfg.optim.global_batch, world)
    device, per_proc = cfg.run.device, cfg.run.model_parallel
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainError(
            f"--device cuda, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
            "check `nvidia-smi` here (the driver must support that CUDA version; in a container, "
            "the GPU reservation and the NVIDIA Container Toolkit); --device cpu to train on the CPU"
        )
    if want_cuda:
        need, have = (local + 1) * per_proc, torch.cuda.device_count()
        if need > have:
            raise TrainError(
                f"local rank {local} with --model-parallel {per_proc} needs {need} GPUs, {have} visible"
            )
        devices = [torch.device("cuda", local * per_proc + i) for i in range(per_proc)]
        torch.cuda.set_device(devices[0])
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    else:
        if per_proc > 1 and device != "cpu":
            raise TrainError(f"--model-parallel {per_proc} needs {per_proc} GPUs; none is visible")
        devices = [torch.device("cpu")] * per_proc
    set_precision(cfg)
    return Env(rank, world, local, devices, batch)


def agree(mine: dict, env: Env) -> None:
    """Every rank checks, before any work, that its settings and data are rank 0's."""
    if env.world == 1:
        return
    everyone: list[dict] = [{}] * env.world
    dist.all_gather_object(everyone, mine)
    for rank, theirs in enumerate(everyone[1:], start=1):
        diff = sorted(k for k in set(theirs) | set(everyone[0]) if theirs.get(k) != everyone[0].get(k))
        if diff:
            raise TrainError(f"rank {rank} disagrees with rank 0 on: {', '.join(diff)}")


def broadcast(value: object, env: Env) -> object:
    """Rank 0's `value` on every rank."""
    if env.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
