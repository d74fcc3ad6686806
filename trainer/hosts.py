"""Several hosts under torchrun: what the processes settle before the process group exists.

torchrun's agent runs a TCP store that every process of the job reaches (node 0's agent with
the static rendezvous that docker/compose.yaml uses; TORCHELASTIC_USE_AGENT_STORE tells the
workers). Two things use it before `init_process_group`, where nothing waits on a collective:

- The settings of a resumed run. Only rank 0's runs folder is sure to hold RUN/config.json (the
  runs folder need not be shared between hosts), so rank 0 publishes the settings it read there
  and every process fills in what it was not given from them, as rank 0 does from its own file.
- The shard check. Each host's main process may hash every shard first (minutes on ImageNet,
  more on a network filesystem). The others wait for it at a barrier whose timeout is sized to
  that hashing (and said when waiting starts), not in the process group's first collective,
  which NCCL abandons after 10 minutes. The process group is created after the barrier, with
  torch's default timeouts, so a hung peer is still found in minutes.

Without torchrun's agent store (one process, or another launcher) each process reads its own
folder and the process group is created at once.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from shards import layout
from shards.reader import load_dataset
from trainer.errors import TrainError

BASE_WAIT_S = 600  # start-up beyond hashing: imports, DALI, a host restarting after a crash
HASH_BYTES_PER_S = 50e6  # assumed for the wait: a slow network filesystem, not a local NVMe
VERIFIED_DIR = "verified-shards"  # RUN/verified-shards/<host>.json: a clean hash pass, per host


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def agent_store(timeout_s: float) -> dist.Store | None:
    """A client of torchrun's agent store, keyed by this job and attempt; None without one."""
    if _world()[1] == 1 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )
    run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"alextrain/{run}/{attempt}/", store)


def run_settings(out: str | None, read: Callable[[str | None], dict]) -> dict:
    """The saved settings of the run in `out` to resume: rank 0's `read(out)`, on every rank.

    `read` returns {} where no run was started. Rank 0 reads its own folder and publishes what
    it found; every other rank takes that, whatever its own folder holds (rank 0 decides whether
    and from what the run resumes, see trainer.train._start).
    """
    rank, _ = _world()
    store = agent_store(BASE_WAIT_S)
    if store is None:
        return read(out)
    if rank == 0:
        saved = read(out)
        store.set("settings", json.dumps(saved))
        return saved
    return json.loads(store.get("settings"))


def verified_record(run_dir: Path) -> Path:
    """Where this host keeps its clean hash pass of the shards, beside the run (the shards may
    be mounted read-only, where `alexprep verify`'s verified.json cannot be written)."""
    return run_dir / VERIFIED_DIR / f"{socket.gethostname() or 'host'}.json"


def dataset_bytes(data: Path, splits: Sequence[str]) -> int:
    """Bytes of the tars of `splits`: what a hash pass reads."""
    meta = load_dataset(data)
    total = 0
    for split in splits:
        for i in range(meta["splits"][split]["shards"]):
            tar = layout.tar_path(data, split, i)
            total += tar.stat().st_size if tar.is_file() else 0
    return total


def wait_for_hosts(hash_bytes: int, say: Callable[[str], None] | None) -> None:
    """Every process has passed its shard check: a barrier on torchrun's store, its timeout
    sized to hashing `hash_bytes`. No-op without the agent store."""
    _, world = _world()
    timeout = BASE_WAIT_S + hash_bytes / HASH_BYTES_PER_S
    store = agent_store(timeout)
    if store is None:
        return
    if say:
        size = tqdm.format_sizeof(hash_bytes, "B", 1000)
        say(
            f"shards checked; waiting up to {timeout:.0f} s for all {world} processes "
            f"({BASE_WAIT_S} s + hashing {size} at {HASH_BYTES_PER_S / 1e6:.0f} MB/s)"
        )
    if store.add("preflight", 1) == world:
        store.set("preflight-all", "1")
    try:
        store.wait(["preflight-all"], timedelta(seconds=timeout))
    except (RuntimeError, dist.DistError) as e:
        raise TrainError(
            f"waited {timeout:.0f} s for the other processes' shard checks; not all arrived ({e})"
        ) from None


def init_group(cuda: bool) -> None:
    """The process group (NCCL on GPUs, gloo on CPUs), under torchrun; torch's default timeouts."""
    if _world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
