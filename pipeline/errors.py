"""The loaders' one error type, in a module of its own so both loaders can raise it."""

from __future__ import annotations


class DamagedSampleError(ValueError):
    """A stored sample that cannot be read or decoded; the message names the shard and key.

    (DALI can also die on such a sample with a signal: `shards.verify.preflight`, run before
    training, is what keeps damaged shards away from it; `--no-mmap` keeps a shard truncated
    under a running reader from becoming a SIGBUS.)"""
