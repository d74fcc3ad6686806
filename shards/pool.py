"""Worker processes for the passes over images and shards (`shard`, `pca-stats`, `verify`) that
stop without hanging and without leaving anything behind.

Why not `with multiprocessing.Pool()`: leaving it early (a damaged shard, Ctrl-C) terminates the
workers with SIGTERM, and a worker killed while sending its result holds the result queue's lock
forever; the pool's task thread then waits on that lock and the parent hangs in `__exit__`. Seen:
`alexprep pca-stats` on a damaged shard hung in 1 run of 40 on two busy cores (it stalled CI).

Here nothing is killed. Leaving the pool by an exception sets a shared flag that every job checks
between images (`check_stop`) and ends by; the queued jobs are cancelled; the pool then shuts
down as a finished one does, within one image's time. Workers ignore SIGINT (the parent's
Ctrl-C becomes that flag, so a worker is never interrupted inside a queue operation) and are
killed with their parent (`kill -9` of a run leaves no worker still writing into OUT).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

_stop = None  # in a worker: the pool's stop flag (a multiprocessing Event)


class Stopped(Exception):
    """A job ended early because its pool is being left (an error elsewhere, Ctrl-C)."""


def check_stop() -> None:
    """Between two images of a job: end it if the pool is being left. A no-op outside a pool."""
    if _stop is not None and _stop.is_set():
        raise Stopped("stopped: the run is ending")


class _Pool(ProcessPoolExecutor):
    def submit(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        """With the fork context the workers are forked in the first `submit`: SIGINT is blocked
        around it, so a Ctrl-C at that moment is held for the parent (raised as submit returns)
        rather than interrupting a child's start-up (its at-fork hooks) before `_init` ignores it."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return super().submit(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def fork_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
) -> Iterator[ProcessPoolExecutor]:
    """`workers` forked processes (fork: they share the parent's imports and read-only state).
    Leaving by an exception stops the running jobs at their next `check_stop` and runs no queued
    one; a worker that dies (the OOM killer) fails its job with `BrokenProcessPool`, never a hang."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    pool = _Pool(max(1, workers), mp_context=ctx, initializer=_init, initargs=(stop, initializer, initargs))
    try:
        yield pool
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _init(stop, initializer: Callable[..., None] | None, initargs: tuple) -> None:  # noqa: ANN001
    global _stop
    _stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by `_Pool.submit`
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def die_with_parent() -> None:
    """In a worker: be killed when the parent dies (Linux), so `kill -9` of a run leaves no
    orphan workers still writing into OUT while a re-run starts. Elsewhere a no-op."""
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call: nothing will signal us
        os.kill(os.getpid(), signal.SIGKILL)
