"""How a run stops when it is told to or loses a peer: one line, never a page of traceback.

- Ctrl-C once raises KeyboardInterrupt as usual; `run` says where it can go on from (the last
  checkpoint is intact and `--resume` continues from it), other commands what their CLI group
  says (trainer/cli_common.Group: one line, exit 130).
  Ctrl-C again, while the exit's clean-up runs (DALI
  unloads its plugins in an atexit callback), exits at once with one line instead of "Exception
  ignored in atexit callback ... KeyboardInterrupt".
- Under torchrun, a process that dies (killed, out of memory, a lost host) closes its
  connections; the survivors' next collective fails with a gloo/NCCL error some forty lines
  long. `lost_peers` turns it into one TrainError naming the rank that stopped (when there is
  one other) and how to resume.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import WORKER, LoaderWorkerError
from trainer.errors import TrainError

_PEER_GONE = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
    "Socket Timeout",
)


def second_interrupt_exits(prog: str) -> None:
    """Install the SIGINT handler: the first raises KeyboardInterrupt, the next exits (130)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # SIGINT ignored (a background job) or someone else's handler: leave it

    def handler(signum: int, frame: object) -> None:
        if handler.interrupted:
            # after a newline: a progress bar may hold the line (tqdm.write takes locks: not here)
            sys.stderr.write(f"\n{prog}: interrupted again: stopped without clean-up\n")
            sys.stderr.flush()
            os._exit(128 + signal.SIGINT)
        handler.interrupted = True
        raise KeyboardInterrupt

    handler.interrupted = False
    signal.signal(signal.SIGINT, handler)


def _peer_gone(e: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(e, dist.DistError) or any(s in str(e) for s in _PEER_GONE)


@contextlib.contextmanager
def lost_peers(rank: int, world: int, run_dir: Path) -> Iterator[None]:
    """Turn a collective that failed because another process of the run is gone into one line."""
    if world == 1:
        yield
        return
    try:
        yield
    except RuntimeError as e:
        if not _peer_gone(e):
            raise
        others = [r for r in range(world) if r != rank]
        who = f"rank {others[0]}" if len(others) == 1 else "another rank (torchrun's log names it)"
        raise TrainError(
            f"rank {rank}: {who} of this run stopped ({_cause(e)}); the last checkpoint in --out "
            f"({run_dir.name}/{'last.pt'}) is intact: start the same torchrun command again with "
            "--resume (or --auto-resume)"
        ) from None


@contextlib.contextmanager
def lost_workers(run_dir: Path) -> Iterator[None]:
    """A loading worker process killed (the kernel's OOM killer, a stray signal) is said in one
    line, with where to go on from: not a traceback from wherever torch's SIGCHLD handler raised
    it (often the backward pass), and not damaged data (nothing in the shards is at fault)."""
    try:
        yield
    except (RuntimeError, LoaderWorkerError) as e:
        why = " ".join(str(e).split())
        if isinstance(e, RuntimeError):
            if not why.startswith(WORKER):
                raise
            why = str(LoaderWorkerError(why))
        last = run_dir / "last.pt"
        then = (
            f"the last checkpoint ({last}) is intact: start the same command again with --resume"
            if last.is_file()
            else "no checkpoint was written yet: start it again"
        )
        raise TrainError(f"{why}; {then}") from None


def _cause(e: BaseException) -> str:
    """The backend's sentence that says what happened, without its source location."""
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", " ".join(str(e).split()))
    for phrase in _PEER_GONE:
        at = text.find(phrase)
        if at >= 0:
            end = text.find(". ", at)
            return text[at : end if end >= 0 else at + 120]
    return text[:120] or type(e).__name__
