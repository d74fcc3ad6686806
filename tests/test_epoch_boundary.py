"""Epoch boundaries: the next epoch started while this one runs, the eval pipeline kept.

What must not change: an epoch is a pure function of (seed, epoch, rank, world), started ahead
or not, resumed mid-way or not; an eval pass is the same pass every time; and at most one
training pipeline beyond the current one is alive.
"""

from __future__ import annotations

import gc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.bench import epoch_boundaries, pass_starts
from pipeline.loader import EvalLoader, TrainLoader
from tests.conftest import alexprep, opts

# the reference loader forks DataLoader workers for each loader and epoch: its cases are in the
# slow tier (CI runs both backends); DALI's, in this process, stay in the fast one
BACKENDS = ["dali", pytest.param("reference", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """40 random 16px images, each its own class (labels name samples), 10 shards of 4."""
    root = tmp_path_factory.mktemp("boundary")
    rng = np.random.default_rng(1)
    for i in range(40):
        d = root / "src" / f"c{i:03d}"
        d.mkdir(parents=True)
        cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    alexprep("shard", root / "src", root / "out", "--size", 16, "--shard-size", 4, "--quiet")
    alexprep("pca-stats", root / "out", "--quiet")
    return root / "out"


def _opt(backend: str, **kw) -> tuple:  # noqa: ANN003
    """(LoaderConfig, Feed): batches of 3 (13 steps), 12px crops, a small shuffle buffer."""
    return opts(
        **{"batch_size": 3, "num_threads": 2, "crop": 12, "backend": backend, "shuffle_buffer": 8, **kw}
    )


def _epoch(loader: TrainLoader, epoch: int, start_step: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start_step=start_step)]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_epochs_started_ahead_are_the_epochs_built_on_demand(shards, backend):
    for rank, world in ((0, 1), (1, 2)):
        ahead = TrainLoader(shards, *_opt(backend, rank=rank, world=world))
        on_demand = TrainLoader(shards, *_opt(backend, rank=rank, world=world), ahead=False)
        got = [_epoch(ahead, e) for e in range(3)]  # epochs 1 and 2 were started during 0 and 1
        want = [_epoch(on_demand, e) for e in range(3)]
        assert all(_same(g, w) for g, w in zip(got, want, strict=True)), (backend, rank)
        assert not _same(got[0], got[1])  # epochs differ: the comparison is not vacuous
        # asked out of order (epoch 3 was started during 2): dropped, epoch 5 built, mid-epoch
        assert _same(_epoch(ahead, 5, start_step=2), _epoch(on_demand, 5)[2:])
        ahead.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_resumed_run_continues_into_the_epoch_started_ahead_exactly(shards, backend):
    whole = TrainLoader(shards, *_opt(backend), ahead=False)
    resumed = TrainLoader(shards, *_opt(backend), epochs=3)  # a new process resuming at epoch 1, step 4
    assert _same(_epoch(resumed, 1, start_step=4), _epoch(whole, 1)[4:])
    assert _same(_epoch(resumed, 2), _epoch(whole, 2))


def _live_pipelines() -> int:
    from nvidia.dali import Pipeline

    return sum(issubclass(type(o), Pipeline) for o in gc.get_objects())


@pytest.mark.slow  # four epochs of DALI pipelines
def test_at_most_one_training_pipeline_beyond_the_current_is_alive(shards):
    before = _live_pipelines()
    loader = TrainLoader(shards, *_opt("dali"), epochs=4)
    counts = []
    for e in range(4):
        for _ in loader.epoch(e):
            counts.append(_live_pipelines() - before)
    assert max(counts) == 2  # the current epoch's and the next's (or the last, retired)
    assert _live_pipelines() - before == 1  # nothing started after the last epoch; it is retired
    loader.close()
    assert _live_pipelines() == before  # torn down without a gc pass: no reference cycles


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_passes_repeat_exactly_on_a_kept_pipeline(shards, backend):
    for rank, world in ((0, 1), (1, 2)):
        opt = _opt(backend, rank=rank, world=world, batch_size=7)  # 7 does not divide 20 or 40
        kept = EvalLoader(shards, *opt, split="train")
        fresh = list(EvalLoader(shards, *opt, split="train", keep=False))
        for _ in range(3):
            assert _same(list(kept), fresh), (backend, rank)
        next(iter(kept))  # a pass given up after one batch: the next pass still starts at the start
        assert _same(list(kept), fresh)
        labels = sorted(v for _, y in fresh for v in y.tolist())
        assert len(labels) == 40 // world and len(set(labels)) == len(labels)


def test_the_eval_pipeline_is_built_once_across_passes(shards):
    before = _live_pipelines()
    loader = EvalLoader(shards, *_opt("dali", batch_size=7), split="train")
    for _ in range(3):
        list(loader)
        assert _live_pipelines() - before == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_boundary_figures_come_from_one_stream(shards, backend):
    loader = TrainLoader(shards, *_opt(backend), epochs=3)
    m = epoch_boundaries(loader, 3)
    assert m["steps_per_epoch"] == loader.steps_per_epoch == 13
    assert len(m["gaps_s"]) == 2 and m["steady_s"] > 0 and m["gap_in_batches"] == m["gap_s"] / m["steady_s"]
    p = pass_starts(EvalLoader(shards, *_opt(backend), split="train"), 2)
    assert len(p["first_batch_s"]) == 2 and p["pass_s"] >= p["later_first_s"] > 0
    with pytest.raises(ValueError, match="epochs 1 must be >= 2"):
        epoch_boundaries(loader, 1)
