"""Tests only: a process that dies at an exact point, as a preempted host's would.

`ALEXTRAIN_TEST_DIE=step:K` SIGKILLs rank 0 right after its K-th step; `save:K` SIGKILLs it in
its K-th checkpoint save, leaving a half-written temp file behind, as a kill in `torch.save`
would. The loop calls `maybe_die` at those two points; nothing else in the product reads it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

DIE_ENV = "ALEXTRAIN_TEST_DIE"


def maybe_die(event: str, count: int, partial: Path | None = None) -> None:
    if os.environ.get(DIE_ENV) != f"{event}:{count}" or int(os.environ.get("RANK", 0)) != 0:
        return
    if partial is not None:
        partial.write_bytes(b"PK\x03\x04 partial")
    os.kill(os.getpid(), signal.SIGKILL)
