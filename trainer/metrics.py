"""metrics.jsonl, read in one place: one JSON object per epoch, appended by the trainer.

A run killed mid-write leaves a torn last line; a resumed run may have written an epoch twice;
a file edited by hand may hold anything. Readers want the epochs that are there, once each, in
order, and a warning for what was skipped rather than a traceback.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

METRICS = "metrics.jsonl"


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl, one per epoch (the last written wins), sorted by epoch.

    Lines that are not a JSON object with an integer `epoch` (a torn last line, garbage) are
    skipped with one warning naming the file and the line numbers. A missing file is [].
    """
    path = Path(path)
    if not path.is_file():
        return []
    by_epoch: dict[int, dict] = {}
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            epoch = row.get("epoch") if isinstance(row, dict) else None
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                bad.append(n)
                continue
            by_epoch[epoch] = row
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s): {shown}", stacklevel=2)
    return [by_epoch[e] for e in sorted(by_epoch)]
