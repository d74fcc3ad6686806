"""A fresh order every epoch, disjoint rank parts, every sample once: both backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.loader import TrainLoader
from pipeline.order import rank_range, rank_shards, shard_order
from tests.conftest import IMAGENET, alexprep, imagenet_files, opts

BACKENDS = ["dali", "reference"]


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> Path:
    """The 1,000 real ImageNet samples at 32px in 200 shards of 5: one class each, so labels
    name samples. Small shards and a small buffer stand in for ImageNet's 500 shards and a
    buffer of 0.3 % of the set."""
    imagenet_files()
    out = tmp_path_factory.mktemp("order") / "shards"
    alexprep("shard", IMAGENET, out, "--label-from-name", "--size", 32, "--shard-size", 5, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    return out


def _order(data: Path, backend: str, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    opt = opts(
        batch_size=25, num_threads=2, crop=24, backend=backend, shuffle_buffer=64, rank=rank, world=world
    )
    return np.concatenate([y.numpy() for _, y in TrainLoader(data, *opt).epoch(epoch)])


@pytest.mark.slow  # over ~20 s on 2 cores
@pytest.mark.parametrize("backend", BACKENDS)
def test_consecutive_epochs_are_uncorrelated(small_shards, backend):
    orders = [_order(small_shards, backend, e) for e in range(5)]
    rs = []
    for a, b in zip(orders, orders[1:], strict=False):
        assert sorted(a) == sorted(b) == list(range(1000))  # every sample once per epoch
        pos_b = np.empty(1000, int)
        pos_b[b] = np.arange(1000)
        rs.append(np.corrcoef(np.arange(1000), pos_b[a])[0, 1])
    # one pair's r spreads by ~1/sqrt(shards) = 0.07 around 0; without the shard permutation it is 0.9
    assert abs(np.mean(rs)) < 0.1 and max(map(abs, rs)) < 0.25, rs


def test_shard_order_and_rank_parts():
    assert shard_order(50, 1, 3) == shard_order(50, 1, 3) != shard_order(50, 1, 4)
    assert sorted(shard_order(50, 1, 3)) == list(range(50))
    sizes = [10, 10, 7, 10]
    order = shard_order(4, 0, 0)
    flat = [(i, j) for i in order for j in range(sizes[i])]
    for world in (1, 2, 3, 4):
        got = []
        for rank in range(world):
            shards, skip, length = rank_shards(sizes, order, rank, world)
            start, stop = rank_range(37, rank, world)
            stream = [(i, j) for i in shards for j in range(sizes[i])][skip : skip + length]
            assert stream == flat[start:stop]
            got += stream
        assert got == flat
