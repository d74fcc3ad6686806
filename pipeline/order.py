"""Which training samples each rank reads in an epoch, and in which shard order: both backends.

A reader that shuffles only inside a buffer (DALI's `initial_fill`, webdataset's `shuffle`)
keeps the stored order at the scale of the dataset: a sample read early in epoch 0 is read
early in every epoch. So the shard list itself is permuted every epoch, seeded from
(seed, epoch) only, so that

- every rank computes the same permutation without talking to the others, and the ranks'
  parts (contiguous sample ranges of the permuted list, as DALI's reader splits them) stay
  disjoint and cover the whole split;
- a resumed run replays an epoch exactly (the order is a pure function of seed and epoch).
"""

from __future__ import annotations

import numpy as np

from shards.index import INDEX_VERSION

_ORDER_STREAM = 0x5A4D  # keeps this stream apart from the other uses of (seed, epoch)


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation of shard indices, identical on every rank."""
    return np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(num_shards).tolist()


def rank_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's samples [start, stop) of `total`: the split of DALI's readers (`start_index`)."""
    return total * rank // world, total * (rank + 1) // world


def shard_sizes(idxs: list[str]) -> list[int]:
    """Samples per shard, from the header line of each DALI index (`v1.2 N`)."""
    sizes = []
    for idx in idxs:
        with open(idx) as f:
            head = f.readline().split()
        if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
            raise ValueError(f"{idx}: not a DALI {INDEX_VERSION} index")
        sizes.append(int(head[1]))
    return sizes


def rank_shards(sizes: list[int], order: list[int], rank: int, world: int) -> tuple[list[int], int, int]:
    """The shards (in `order`) that hold this rank's range, the samples to skip in the first
    of them, and the range's length: what a reader of whole shards needs to read exactly it."""
    start, stop = rank_range(sum(sizes), rank, world)
    shards, skip, pos = [], 0, 0
    for i in order:
        if pos < stop and pos + sizes[i] > start:
            if not shards:
                skip = start - pos
            shards.append(i)
        pos += sizes[i]
    return shards, skip, stop - start
