"""The plan of a dataset (which input goes into which shard, in which order), which dataset an
OUT holds, and whether a run of `alexprep shard` may write into it.

The plan is a pure function of the inputs and arguments: the train split is shuffled globally
with the seed (DALI's reader only shuffles inside a buffer), other splits keep source order, and
each split is cut into shards of `shard_size` inputs. A dataset is its plan and the arguments
that change its bytes (size, quality, shard size, seed); workers and node counts do not. A run whose identity
differs from OUT's dataset.json is refused, naming the flag and both values, or how SRC's
inputs changed, so a resumed or repaired OUT is never a mix of two datasets.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.sources import Source, clean_name
from preprocess.workers import ShardError
from shards import layout

FLAGS = {"size": "--size", "quality": "--quality", "shard_size": "--shard-size", "seed": "--seed"}


@dataclass
class SplitPlan:
    name: str
    # (source path relative to root, label, reason if rejected before reading), in shard order
    items: list[tuple[str, int, str | None]]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.items) // self.shard_size)

    def shard_items(self, index: int) -> list[tuple[str, int, str | None]]:
        return self.items[index * self.shard_size : (index + 1) * self.shard_size]


def plan_splits(source: Source, shard_size: int, seed: int) -> list[SplitPlan]:
    plans = []
    for name in sorted(source.splits):
        reasons = source.reasons.get(name, {})
        items = [(path, label, reasons.get(n)) for n, (path, label) in enumerate(source.splits[name])]
        if name == "train":
            order = np.random.default_rng(seed).permutation(len(items))
            items = [items[i] for i in order]
        plans.append(SplitPlan(name, items, shard_size))
    return plans


def dataset_identity(source: Source, plans: list[SplitPlan], settings: dict[str, int]) -> dict:
    """What makes two runs the same dataset (and nothing that does not: workers, nodes);
    `settings`: the value of each of FLAGS."""
    digest = hashlib.sha256()
    for p in plans:
        for path, label, reason in p.items:
            extra = "" if reason is None else f"\t{reason}"
            digest.update(f"{p.name}\t{clean_name(path)}\t{label}{extra}\n".encode())
    return {
        "format_version": layout.FORMAT_VERSION,
        "layout": source.layout,
        **{k: settings[k] for k in FLAGS},
        "num_classes": len(source.classes),
        "plan_sha256": digest.hexdigest(),
    }


def _difference(key: str, old: dict, identity: dict, found: dict[str, int]) -> str | None:
    """One setting of OUT's dataset.json that this run would make otherwise, in the user's
    terms: the flag and both values, or, for the plan (the inputs, their labels and, for train,
    their --seed order), the inputs counted per split; None where a flag already explains it."""
    if key != "plan_sha256":
        return f"{FLAGS.get(key, key)}: OUT {old.get(key)!r}, now {identity[key]!r}"
    if any(old.get(k) != identity[k] for k in ("seed", "layout", "num_classes")):
        return None  # the order or the classes changed: said by that key
    splits = old.get("splits") if isinstance(old.get("splits"), dict) else {}
    before = {k: v.get("found") for k, v in splits.items() if isinstance(v, dict)}
    now = ", ".join(f"{k} {n}" for k, n in sorted(found.items()))
    if not before:  # a run that stopped before its summary: no counts to compare
        return f"SRC's inputs are not those OUT was started from (found now: {now})"
    if before == found:
        return (
            f"SRC's inputs are not those OUT was made from (as many, {now}: renamed, replaced or "
            "relabelled; or read otherwise by the alexprep that made OUT, e.g. one from before folder "
            "links in class folders and absolute labels-CSV paths under SRC were read)"
        )
    then = ", ".join(f"{k} {n}" for k, n in sorted(before.items()))
    return f"SRC's inputs are not those OUT was made from (found then: {then}; now: {now})"


def check_out(src: Path, out: Path, identity: dict, found: dict[str, int]) -> dict | None:
    """OUT's existing dataset.json if it is the same dataset; refuse anything else (reads only).
    `found`: the inputs per split now, to say how SRC changed."""
    if out.is_symlink():  # written through, a link would put the dataset somewhere OUT does not say
        target = "a folder" if out.is_dir() else "nothing" if not out.exists() else "a file"
        raise ShardError(
            f"{out}: is a symbolic link (to {target}); pass a real folder's path as OUT "
            f"(e.g. the link's target, {os.path.realpath(out)})"
        )
    if out.exists() and not out.is_dir():
        raise ShardError(f"{out}: exists and is not a folder")
    if out.resolve() == src.resolve():
        raise ShardError(f"{out}: OUT must not be SRC itself (a subfolder of SRC is fine)")
    path = out / layout.DATASET_JSON
    if path.exists() or path.is_symlink():
        try:
            old = layout.read_json(path)
        except layout.LayoutError as e:
            raise ShardError(f"{e}; OUT is not a dataset this tool wrote: use an empty OUT") from None
        diff = [_difference(k, old, identity, found) for k in identity if old.get(k) != identity[k]]
        diff = [d for d in diff if d]
        if diff:
            raise ShardError(
                f"{out}: holds a different dataset ({'; '.join(diff)}); "
                "use an empty OUT or the original arguments"
            )
        return old
    if out.is_dir():
        try:
            # another node's lock and temporary files may appear before its dataset.json
            entries = [
                e
                for e in os.listdir(out)
                if not (
                    e.startswith(".alexprep-node") or (e.startswith(".") and e.endswith(layout.TMP_SUFFIX))
                )
            ]
        except OSError as e:
            raise ShardError(f"{out}: cannot list ({e.strerror})") from None
        if entries:
            raise ShardError(f"{out}: not empty and has no {layout.DATASET_JSON}; refusing to mix")
    return None
