"""`alexprep pca-stats`: a covariance we chose is recovered; exact against numpy; worker-invariant."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.augment import estimate_note
from preprocess.pca import decode_rgb
from shards.reader import iter_shard, shard_paths
from tests.conftest import alexprep


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def write_folder(root: Path, colours: np.ndarray, size: int = 16, split: str = "train") -> Path:
    """One flat-colour PNG per row of `colours` (RGB), two classes, ImageFolder layout."""
    for i, rgb in enumerate(colours):
        d = root / split / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        img = np.empty((size, size, 3), np.uint8)
        img[:] = rgb[::-1]  # cv2 writes BGR
        cv2.imwrite(str(d / f"{i:04d}.png"), img)
    return root


@pytest.fixture(scope="module")
def chosen_cov_shards(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """400 flat-colour images whose colours have exactly the covariance V diag(lam) V^T."""
    lam, v = np.array([900.0, 100.0, 25.0]), _rotation(1)
    z = np.random.default_rng(0).normal(size=(400, 3))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T, bias=True))).T  # sample cov = I exactly
    colours = np.clip(np.round(120 + z @ (v * np.sqrt(lam)).T), 0, 255).astype(np.uint8)
    root = write_folder(tmp_path_factory.mktemp("cov") / "src", colours)
    out = root.parent / "shards"
    alexprep("shard", root, out, "--size", 16, "--shard-size", 64, "--quiet")
    return out, lam, v


def test_recovers_the_chosen_eigenbasis(chosen_cov_shards):
    out, lam, v = chosen_cov_shards
    alexprep("pca-stats", out, "--quiet")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pixel_scale"] == 255 and stats["num_images"] == 400
    assert stats["num_pixels"] == 400 * 16 * 16
    eigval, eigvec = np.array(stats["eigval"]), np.array(stats["eigvec"])
    assert list(eigval) == sorted(eigval, reverse=True)
    np.testing.assert_allclose(eigval, lam, rtol=0.03)  # rounding to uint8 + JPEG: a few %
    for i in range(3):  # each eigenvector (a column) within ~2 degrees, up to sign
        assert abs(eigvec[:, i] @ v[:, i]) > np.cos(np.radians(2))
    # sign fixed deterministically: the largest-magnitude entry of each column is positive
    assert all(eigvec[np.argmax(np.abs(eigvec[:, i])), i] > 0 for i in range(3))
    np.testing.assert_allclose(stats["mean_rgb"], [120, 120, 120], atol=1.0)


def test_exactly_numpy_over_all_pixels_and_worker_invariant(chosen_cov_shards, tmp_path):
    out, _, _ = chosen_cov_shards
    alexprep("pca-stats", out, "--workers", 1, "--quiet")
    one = ((out / "stats.json").read_bytes(), (out / "mean_image.npy").read_bytes())
    alexprep("pca-stats", out, "--workers", 3, "--quiet")
    three = ((out / "stats.json").read_bytes(), (out / "mean_image.npy").read_bytes())
    assert one == three  # byte-identical, not merely close

    images = np.stack([decode_rgb(s.jpeg) for t in shard_paths(out, "train") for s in iter_shard(t)])
    pixels = images.reshape(-1, 3).astype(np.float64)
    stats = json.loads(one[0])
    np.testing.assert_allclose(stats["mean_rgb"], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["cov_rgb"], np.cov(pixels.T, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["std_rgb"], pixels.std(0), rtol=1e-9)
    mean_image = np.load(out / "mean_image.npy")
    assert mean_image.dtype == np.float32 and mean_image.shape == (16, 16, 3)
    np.testing.assert_allclose(mean_image, images.mean(0), rtol=1e-6)


def test_real_imagenet_samples(imagenet_with_stats):
    stats = json.loads((imagenet_with_stats / "stats.json").read_text())
    assert stats["num_images"] == 1000 and not stats["computed_from"]["estimate"]
    # the first principal axis of natural images is luminance: all three weights ~ 1/sqrt(3)
    np.testing.assert_allclose(stats["eigvec"][0][0], 0.577, atol=0.05)
    assert np.all(np.array(stats["eigvec"])[:, 0] > 0.5)
    assert stats["eigval"][0] > 5 * stats["eigval"][1] > 0
    assert np.load(imagenet_with_stats / "mean_image.npy").shape == (256, 256, 3)


def test_max_images_is_an_estimate(imagenet_shards, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(imagenet_shards, out)
    proc = alexprep("pca-stats", out, "--max-images", 100, "--quiet")
    assert "estimate" in proc.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_images"] == 100 and stats["computed_from"]["estimate"]
    note = estimate_note(out)  # said when a run starts on it: not the paper's statistics
    assert note == (
        f"{out}/stats.json: an estimate from 100 of the train split's 1,000 images (pca-stats "
        f"--max-images); `alexprep pca-stats {out}` computes the paper's, over all of them"
    )
    alexprep("pca-stats", out, "--quiet")
    assert estimate_note(out) is None


def test_no_train_shards_is_a_clear_error(tmp_path):
    root = write_folder(tmp_path / "src", np.full((4, 3), 100, np.uint8), split="val")
    alexprep("shard", root, tmp_path / "out", "--size", 16, "--quiet")
    proc = alexprep("pca-stats", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "no train split" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_train_split_with_no_image_written_is_a_clear_error(tmp_path):
    # every train input rejected (random bytes, an empty file); val has a good image
    root = write_folder(tmp_path / "src", np.full((1, 3), 100, np.uint8), split="val")
    (root / "train" / "class0").mkdir(parents=True)
    (root / "train" / "class0" / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "train" / "class0" / "empty.jpg").write_bytes(b"")
    alexprep("shard", root, tmp_path / "out", "--size", 16, "--quiet")
    proc = alexprep("pca-stats", tmp_path / "out", "--quiet", check=False)
    assert proc.returncode == 2 and "out: no images in its train split" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "stats.json").exists()
