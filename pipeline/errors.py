"""The loaders' error types, in a module of their own so both loaders can raise them."""

from __future__ import annotations


class DamagedSampleError(ValueError):
    """A stored sample that cannot be read or decoded; the message names the shard and key.

    (DALI can also die on such a sample with a signal: `shards.verify.preflight`, run before
    training, is what keeps damaged shards away from it; `--no-mmap` keeps a shard truncated
    under a running reader from becoming a SIGBUS.)"""


WORKER = "DataLoader worker"  # torch: "DataLoader worker (pid N) is killed by signal: ...", or "... exited"


class LoaderWorkerError(ValueError):
    """A loading worker process ended under the loader: killed by a signal or by the kernel's
    OOM killer. Not a fault of the data, so not a DamagedSampleError."""

    def __init__(self, why: str):
        super().__init__(
            f"a loading worker process ended ({why}): it was killed (by a signal, or by the kernel "
            "when memory ran out: see `dmesg`), not a fault of the data"
        )
