"""Checkpoints: atomic, complete enough to resume exactly, loadable with weights_only=True.

Contents (KEYS): model weights (CPU tensors, the same layout whatever the device placement),
optimiser and schedule state, the position (`epoch` in progress and `epoch_step` steps into it;
`step` counts all steps), the partial epoch's metric sums, every finished epoch's metrics row
(`history`: metrics.jsonl is rewritten from it on resume), the best validation top-1 error, the
resolved config and dataset fingerprint, the process count, and (OPTIONAL_KEYS) the loader
that ran. No RNG state: each epoch's data order and augmentation are a function of (seed,
epoch, rank), and dropout is reseeded per step from (seed, epoch, step, rank), so the position
alone fixes all randomness to come. Nothing but tensors, numbers, strings, lists and dicts, so
`torch.load(path, weights_only=True)` reads it.

Files in a run folder: last.pt (newest), best.pt (best val top-1 so far), and with `--keep N`
the newest N as step-00001234.pt (last.pt is a hard link to the newest of them).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import torch

from shards import layout
from trainer.errors import CheckpointError  # noqa: F401 (re-exported)

LAST = "last.pt"
BEST = "best.pt"
FORMAT = 3  # 3: the nested config of 0.2; older checkpoints are refused (re-train or use 0.1)
KEYS = frozenset(
    {
        "format",
        "model",
        "optimizer",
        "schedule",
        "epoch",
        "epoch_step",
        "step",
        "sums",
        "history",
        "best_top1_err",
        "metrics",
        "config",
        "model_config",
        "dataset",
        "world",
    }
)
# Written since the loader `auto` was resolved per host (a checkpoint from before lacks it):
# the loader that ran, "dali" or "reference".
OPTIONAL_KEYS = frozenset({"backend"})
_STEP_FILE = re.compile(r"step-(\d{8,})\.pt")


def save(path: Path, state: dict) -> None:
    """Atomically: after a crash `path` is the previous checkpoint or this one, never a mix."""
    buf = io.BytesIO()
    torch.save(state, buf)
    layout.write_atomic(path, buf.getvalue())


def _publish(src: Path, dst: Path) -> None:
    """`dst` becomes the same bytes as `src`, atomically: a hard link, or a copy where links fail."""
    tmp = layout.tmp_path(dst)  # unique per process and call: nothing to clear first
    try:
        os.link(src, tmp)
    except OSError:  # a filesystem without hard links
        layout.write_atomic(dst, src.read_bytes())
        return
    try:
        with layout.writing(dst):
            os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_run(run: Path, state: dict, keep: int = 1, best: bool = False) -> Path:
    """Write a run's checkpoint: last.pt, best.pt when `best`, and the newest `keep` step files.

    Every file appears atomically; a kill at any point leaves the previous last.pt or the new one.
    """
    last = run / LAST
    if keep == 1:
        save(last, state)
        written = last
    else:
        written = run / f"step-{state['step']:08d}.pt"
        save(written, state)
        _publish(written, last)
    steps = kept(run)  # with --keep 1 none (a run resumed with it after --keep N kept N)
    for old in steps[: max(0, len(steps) - keep)] if keep > 1 else steps:
        old.unlink(missing_ok=True)
    if best:
        _publish(written, run / BEST)
    return written


def kept(run: Path) -> list[Path]:
    """The step-*.pt checkpoints of a run folder, oldest first."""
    found = [p for p in run.glob("step-*.pt") if _STEP_FILE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_STEP_FILE.fullmatch(p.name).group(1)))


def resolve(path: Path) -> Path:
    """The checkpoint a user means: a run folder -> its best.pt, else its last.pt; a file -> itself.

    So `eval`, `predict`, `report` ... accept `RUN` as well as `RUN/last.pt`.
    """
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        if (path / "metrics.jsonl").is_file() and (path / "metrics.jsonl").stat().st_size:
            # a finished run's record kept without its weights (docs/fig1-settled/runs/*)
            raise CheckpointError(f"{path}: its metrics.jsonl lists epochs, but its checkpoints are not here")
        if (path / "config.json").is_file():  # a run started whose first checkpoint is to come
            raise CheckpointError(
                f"{path}: a run with no checkpoint yet (the first is written when an epoch ends, "
                "or after --checkpoint-every steps)"
            )
        raise CheckpointError(f"{path}: a folder with no {BEST} or {LAST} (not a run folder?)")
    if path.is_file():
        return path
    raise CheckpointError(f"{path}: no such checkpoint or run folder")


def load(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (a corrupt or foreign file: say which)
        raise CheckpointError(f"{path}: not a readable checkpoint ({e.__class__.__name__})") from None
    if not isinstance(state, dict):  # a torch file holding a list, a tensor, a number
        raise CheckpointError(
            f"{path}: not an alextrain checkpoint (holds a {type(state).__name__}, not a dict)"
        )
    bad = nonfinite(state.get("model")) + nonfinite(_velocities(state))
    if bad:  # eval, predict, kernels, neighbors, --resume and --init-from all read through here
        raise CheckpointError(
            f"{path}: {len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]}): the run diverged; use an "
            "earlier checkpoint, or train again with a lower --lr"
        )
    return state


def nonfinite(tensors: object) -> list[str]:
    """Names of the floating-point tensors of a {name: tensor} table holding a NaN or an inf."""
    if not isinstance(tensors, dict):
        return []
    return [
        str(k)
        for k, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def _velocities(state: dict) -> dict:
    opt = state.get("optimizer")
    per_param = opt.get("state") if isinstance(opt, dict) else None
    if not isinstance(per_param, dict):
        return {}
    return {f"optimizer velocity {k}": s.get("velocity") for k, s in per_param.items() if isinstance(s, dict)}


def check_state(state: dict, model: torch.nn.Module, path: Path) -> None:
    """Refuse a checkpoint that loads but is not a complete one for this model."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an alextrain checkpoint (a {type(state).__name__})")
    missing, extra = sorted(KEYS - set(state)), sorted(set(state) - KEYS - OPTIONAL_KEYS)
    if missing or extra:
        raise CheckpointError(
            f"{path}: malformed checkpoint ("
            + "; ".join(
                [f"missing {', '.join(missing)}"] * bool(missing)
                + [f"unexpected {', '.join(extra)}"] * bool(extra)
            )
            + ")"
        )
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = state["model"]
    have = (
        {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
        if isinstance(weights, dict)
        else {}
    )
    bad = sorted(set(want) ^ set(have)) + sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if bad:
        shown = ", ".join(f"{k} {have.get(k, 'absent')} vs {want.get(k, 'absent')}" for k in bad[:3])
        raise CheckpointError(f"{path}: weights do not fit the model ({len(bad)} tensors differ: {shown})")
    velocity = [s.get("velocity") for s in state["optimizer"].get("state", {}).values()]
    if any(not isinstance(v, torch.Tensor) for v in velocity) or sorted(
        tuple(v.shape) for v in velocity
    ) not in ([], sorted(want[k] for k, p in model.named_parameters())):
        raise CheckpointError(f"{path}: optimizer state does not fit the model")


def cpu_state_dict(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
