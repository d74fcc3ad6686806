"""metrics.jsonl, read in one place: one JSON object per epoch, appended by the trainer.

A run killed mid-write leaves a torn last line; a resumed run may have written an epoch twice;
a file edited by hand may hold anything. Readers want the epochs that are there, once each, in
order, and a warning for what was skipped rather than a traceback.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from shards import layout

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


def restore_metrics(run: Path, history: list[dict]) -> bool:
    """Rewrite a run's metrics.jsonl from its checkpoint's history where the two differ (at every
    start, and for a finished run that trains nothing):
    a kill between the last epoch's checkpoint and its line, or a torn or emptied file, would
    otherwise leave a run that reads as finished and lists fewer epochs. True if it rewrote."""
    path, text = run / METRICS, "".join(json.dumps(r) + "\n" for r in history).encode()
    try:
        if path.read_bytes() == text:
            return False
    except OSError:
        pass
    layout.write_atomic(path, text)
    return True


class MetricsWriter:
    """metrics.jsonl (one line per finished epoch), and TensorBoard when it is installed.

    Only rank 0 writes. The file is rewritten at start from the checkpoint's history (empty for a
    new run), so a run killed between an epoch's line and its checkpoint never lists it twice.
    """

    def __init__(self, run: Path, enabled: bool, history: list[dict]):
        import importlib.util

        self.path, self.enabled, self.tb = run / METRICS, enabled, None
        if not enabled:
            return
        restore_metrics(run, history)
        if importlib.util.find_spec("tensorboard") is not None:  # optional extra
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=len(history) or None)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with layout.writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()
