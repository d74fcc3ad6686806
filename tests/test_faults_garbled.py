"""Garbled files of the right name (issue 21, classes 9 and 10): a mean image with a wrong
dtype or a forged header, and a neighbours cache that is not the model's features."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.augment import StatsError, load_stats
from tests.conftest import alexprep
from tests.faults_common import cifar_checkpoint, jpeg, make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("garbled"))


@pytest.fixture
def copy(data, tmp_path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(data, out)
    return out


def _forged_header(path: Path, shape: tuple[int, ...]) -> None:
    """A valid .npy header claiming `shape`, followed by a few bytes: reading it whole would
    allocate the claimed size (100000 x 100000 x 3 float32: 112 GiB)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m: m.astype(np.complex64), "dtype complex64, not a float mean image"),
        (lambda m: m.astype(np.int8), "dtype int8, not a float mean image"),
        (lambda m: m.astype(np.uint8), "dtype uint8, not a float mean image"),  # not in the list
        (lambda m: np.zeros((64, 64, 3), np.float32), "shape (64, 64, 3), not a 32 x 32 x 3"),  # nor this
        (lambda m: np.zeros((32, 32, 3, 1), np.float32), "shape (32, 32, 3, 1)"),  # nor this
    ],
)
def test_a_mean_image_of_another_dtype_or_size_is_refused(copy, make, message):
    mean = np.load(copy / "mean_image.npy")
    np.save(copy / "mean_image.npy", make(mean))
    with pytest.raises(StatsError, match="re-run `alexprep pca-stats") as e:
        load_stats(copy)
    assert message in str(e.value), str(e.value)


def test_a_forged_header_is_refused_before_any_allocation(copy):
    import resource

    _forged_header(copy / "mean_image.npy", (100_000, 100_000, 3))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(StatsError, match=r"shape \(100000, 100000, 3\), not a 32 x 32 x 3 mean image"):
        load_stats(copy)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing big


def test_a_mean_image_whose_body_is_short_is_refused(copy):
    # not in the list: the right header, a truncated body
    _forged_header(copy / "mean_image.npy", (32, 32, 3))
    with pytest.raises(StatsError, match="mean_image.npy: not a readable .npy"):
        load_stats(copy)


# ---- the neighbours cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bank(data, tmp_path_factory):  # noqa: ANN201
    """(model, a function computing the train split's features through the cache, the cache)."""
    import torch

    from trainer.features import extract_features, feature_cache
    from trainer.inference import load_model

    run = tmp_path_factory.mktemp("run")
    ckpt = cifar_checkpoint(run / "last.pt")
    model, _ = load_model(ckpt, torch.device("cpu"))
    cache = feature_cache(ckpt, data, "train")

    def features(shards: Path = data, where: Path = cache) -> np.ndarray:
        return np.array(extract_features(model, shards, "train", 32, "mean-image", where, 8, False, 1))

    return features, cache


@pytest.mark.parametrize(
    "garble, why",
    [
        (lambda b: b[:5], "not 24 rows"),  # the wrong shape
        (lambda b: np.zeros_like(b), "first rows are not this model's features"),  # all zero
        (lambda b: np.full_like(b, np.nan), "holds NaN or inf"),  # all NaN
        (lambda b: np.where(np.arange(len(b))[:, None] == 17, np.inf, b), "holds NaN or inf"),  # one row
        (lambda b: b.astype(np.float64), "float64"),  # another dtype: not in the list
        (lambda b: b[:, :3], "first rows are not this model's features"),  # other width: nor this
    ],
)
def test_a_wrong_feature_cache_is_computed_again(bank, garble, why):
    features, cache = bank
    right = features()
    assert cache.is_file() and right.shape[0] == 24 and np.isfinite(right).all()
    np.save(cache, garble(np.load(cache)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = features()
    assert [why in str(w.message) for w in caught] == [True], [str(w.message) for w in caught]
    np.testing.assert_array_equal(again, right)
    np.testing.assert_array_equal(np.load(cache), right)  # and the cache is right again


def test_another_dataset_of_the_same_classes_never_reads_the_cache(bank, data, tmp_path):
    """The cache was keyed on the checkpoint and the split's name alone, and checked on its
    first rows: a dataset with the same first images and other ones after them (here: the same
    sources, the images after the first batch repainted) got the other dataset's features."""
    from shards import layout
    from trainer.features import feature_cache

    features, cache = bank
    mine = features()
    src = tmp_path / "src"
    shutil.copytree(data.parent / "src", src)
    sources = layout.read_parquet(data / "train" / layout.MANIFEST, columns=["source"])["source"]
    for n, rel in enumerate(sources.to_pylist()[8:]):  # after the first batch (8) that was checked
        (src / rel).write_bytes(jpeg((250 - 9 * n, 20, 200)))
    other = tmp_path / "other"
    alexprep("shard", src, other, "--size", 32, "--workers", 1, "--quiet")
    for name in ("stats.json", "mean_image.npy"):  # the model's statistics, as eval takes them
        shutil.copy(data / name, other / name)
    ckpt = cache.parent / "last.pt"
    (tmp_path / "fresh").mkdir()
    fresh = features(other, tmp_path / "fresh" / "features.npy")
    assert fresh.shape == mine.shape
    np.testing.assert_array_equal(fresh[:8], mine[:8])  # the same first rows: the old check passed
    assert not np.array_equal(fresh[8:], mine[8:])
    np.testing.assert_array_equal(features(other, feature_cache(ckpt, other, "train")), fresh)
    assert cache.is_file()  # each dataset keeps its cache: going back and forth extracts nothing
