"""The DALI pipelines on the CPU (real DALI, device_id=None) against numpy computed by hand."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.augment import (
    Normalization,
    StatsError,
    crop_origin,
    lighting_matrix,
    load_stats,
    reference_augment,
)
from pipeline.loader import EvalLoader, TrainLoader, parse_labels
from shards.reader import DatasetError, iter_shard, shard_paths
from tests.conftest import alexprep, opts

# the reference loader forks DataLoader workers for every loader a test builds: where a test
# builds dozens, its reference case is in the slow tier (CI runs both backends)
REFERENCE_SLOW = pytest.param("reference", marks=pytest.mark.slow)


def _jpegs_by_label(out: Path) -> dict[int, bytes]:
    return {s.label: s.jpeg for t in shard_paths(out, "train") for s in iter_shard(t)}


def _rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class Draws:
    """Known crop positions, flips and alphas for the pipeline's external_source."""

    def __init__(self, batch: int, size: int, crop: int, seed: int = 3):
        rng = np.random.default_rng(seed)
        self.px = rng.integers(0, size - crop + 1, batch)
        self.py = rng.integers(0, size - crop + 1, batch)
        self.flip = rng.integers(0, 2, batch).astype(np.int32)
        self.alpha = rng.normal(0, 0.1, (batch, 1, 3)).astype(np.float32)
        self.steps = size - crop

    def __call__(self):
        pos = lambda p: (p / self.steps).astype(np.float32)  # noqa: E731
        return pos(self.px), pos(self.py), self.flip, self.alpha


@pytest.mark.parametrize(
    "normalization, div, host",
    [
        ("mean-image", 1.0, True),
        ("channel", 1.0, False),
        ("mean-image", 1.1, True),
        ("mean-image", 1.1, False),
    ],
)
def test_train_batch_equals_numpy_by_hand(imagenet_64, normalization, div, host):
    # host: the CPU graph (mean image subtracted in torch); not host: the GPU graph, run on the CPU
    out, batch = imagenet_64, 16
    draws = Draws(batch, 256, 224)
    opt = opts(batch_size=batch, num_threads=2, normalization=normalization, lighting_scale_div=div)
    loader = TrainLoader(out, *opt, draws=draws)
    assert loader.mean_on_host == (normalization == "mean-image")
    loader.mean_on_host = host
    x, y = next(loader.epoch(0))
    assert x.shape == (batch, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64
    stats = load_stats(out)
    m = lighting_matrix(stats, "cuda-convnet")
    jpegs = _jpegs_by_label(out)  # one image per class: the label names the sample
    for i, label in enumerate(y.tolist()):
        expected = reference_augment(
            _rgb(jpegs[label]),
            Normalization.of(stats, normalization),
            int(draws.px[i]),
            int(draws.py[i]),
            224,
            bool(draws.flip[i]),
            m @ draws.alpha[i, 0].astype(np.float64),
            1 / div,
        )
        np.testing.assert_allclose(x[i].numpy(), expected, atol=1e-3, rtol=0)


@pytest.mark.slow  # two epochs of the 1,000 ImageNet images
def test_cpu_batches_own_their_memory(imagenet_with_stats):
    # The CPU graph yields DALI's own output buffers (no copy): a batch kept by the caller must
    # not change while the pipeline goes on producing, within the epoch and into the next one.
    loader = TrainLoader(imagenet_with_stats, *opts(batch_size=16, num_threads=2, prefetch=2))
    assert loader.mean_on_host
    kept = []
    for epoch in range(2):
        for step, (x, y) in enumerate(loader.epoch(epoch)):
            if step < 4:
                kept.append((x, x.clone(), y, y.clone()))
    assert len(kept) == 8 and len({x.data_ptr() for x, *_ in kept}) == 8
    for x, x0, y, y0 in kept:
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_reference_decode_matches_dali_decode_bit_for_bit(imagenet_64):
    # The oracle above decodes with OpenCV; DALI's CPU decoder must agree exactly for it to hold.
    from nvidia.dali import fn, pipeline_def, types

    jpegs = list(_jpegs_by_label(imagenet_64).values())[:8]

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def decode():
        data = fn.external_source(source=lambda: [np.frombuffer(j, np.uint8) for j in jpegs], batch=True)
        return fn.decoders.image(data, output_type=types.RGB)

    pipe = decode()
    pipe.build()
    (images,) = pipe.run()
    for i, j in enumerate(jpegs):
        assert np.array_equal(np.array(images[i]), _rgb(j))


def _write_stats(out: Path, size: int, eigval, eigvec, mean_rgb=(0, 0, 0), std_rgb=(1, 1, 1)) -> None:
    cov = np.asarray(eigvec) @ np.diag(eigval) @ np.asarray(eigvec).T
    (out / "stats.json").write_text(
        json.dumps(
            {
                "pixel_scale": 255,
                "mean_rgb": list(mean_rgb),
                "std_rgb": list(std_rgb),
                "cov_rgb": cov.tolist(),
                "eigval": list(eigval),
                "eigvec": np.asarray(eigvec).tolist(),
            }
        )
    )
    np.save(out / "mean_image.npy", np.zeros((size, size, 3), np.float32))


def _folder(root: Path, images: list[np.ndarray], labels: list[int]) -> Path:
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        d = root / f"c{label:03d}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:04d}.png"), img[:, :, ::-1])
    return root


@pytest.fixture(scope="module")
def gray_shards(tmp_path_factory) -> Path:
    """48 flat grey 32px images, with a stats.json whose eigenbasis we chose."""
    root = tmp_path_factory.mktemp("gray")
    _folder(root / "src", [np.full((32, 32, 3), 128, np.uint8)] * 48, [i % 4 for i in range(48)])
    alexprep("shard", root / "src", root / "out", "--size", 32, "--quality", 100, "--quiet")
    return root / "out"


@pytest.mark.slow  # thousands of samples for a covariance
@pytest.mark.parametrize("convention", ["cuda-convnet", "fbresnet", "paper", "off"])
def test_lighting_noise_has_the_intended_covariance(gray_shards, convention):
    eigvec = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    eigval = [400.0, 100.0, 9.0]
    _write_stats(gray_shards, 32, eigval, eigvec, mean_rgb=(128, 128, 128))
    opt = opts(batch_size=48, num_threads=2, crop=24, normalization="channel", lighting=convention)
    loader = TrainLoader(gray_shards, *opt)
    # flat grey 128 minus the channel mean 128: every pixel of an output is the lighting shift
    shifts = []
    for epoch in range(40):
        x, _ = next(loader.epoch(epoch))
        flat = x.numpy().reshape(48, 3, -1)
        assert np.allclose(flat, flat[:, :, :1], atol=1e-4)  # one shift for the whole image
        shifts.append(flat[:, :, 0])
    shifts = np.concatenate(shifts).astype(np.float64)
    m = lighting_matrix(load_stats(gray_shards), convention)
    expected = 0.01 * m @ m.T  # alpha ~ N(0, 0.1^2 I)
    if convention == "off":
        assert np.abs(shifts).max() == 0
        return
    np.testing.assert_allclose(np.cov(shifts.T), expected, rtol=0.12, atol=0.02 * expected.max())
    assert np.abs(shifts.mean(0)).max() < 0.15 * np.sqrt(expected.diagonal().max())
    if convention == "cuda-convnet":  # std along the first axis: 0.1 * sqrt(400) = 2 pixel levels
        np.testing.assert_allclose(np.std(shifts @ eigvec[:, 0]), 2.0, rtol=0.1)


@pytest.mark.parametrize("backend", [pytest.param("dali", marks=pytest.mark.slow), "reference"])
def test_ten_crop_geometry(tmp_path, backend):
    # pixel (x, y) holds R = x, G = y: the crop origins can be read off the output
    yy, xx = np.mgrid[0:256, 0:256]
    img = np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8)
    _folder(tmp_path / "src", [img], [0])
    alexprep("shard", tmp_path / "src", tmp_path / "out", "--quality", 100, "--quiet", "--split", "val")
    _write_stats(tmp_path / "out", 256, [1, 1, 1], np.eye(3))
    for crop in (224, 227):
        opt = opts(batch_size=1, num_threads=1, crop=crop, backend=backend)
        x, _ = next(iter(EvalLoader(tmp_path / "out", *opt, split="val", ten_crop=True)))
        assert x.shape == (1, 10, 3, crop, crop)
        corners = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
        for k, (px, py) in enumerate(corners):
            ox, oy = crop_origin(px, 256, crop), crop_origin(py, 256, crop)
            for m in (0, 1):
                r, g = x[0, 2 * k + m, 0].numpy(), x[0, 2 * k + m, 1].numpy()
                left = r[:, -1] if m else r[:, 0]  # mirrored: the left edge is now on the right
                assert abs(left.mean() - ox) < 0.5, (crop, k, m)
                assert abs(g[0].mean() - oy) < 0.5, (crop, k, m)
        centre, _ = next(iter(EvalLoader(tmp_path / "out", *opt, split="val")))
        assert torch.equal(centre[0], x[0, 8])


@pytest.fixture(scope="module")
def unique_label_shards(tmp_path_factory) -> Path:
    """37 images, each its own class, in 4 shards of <= 10: labels identify samples."""
    root = tmp_path_factory.mktemp("unique")
    rng = np.random.default_rng(0)
    _folder(root / "src", [rng.integers(0, 255, (16, 16, 3), np.uint8) for _ in range(37)], list(range(37)))
    alexprep("shard", root / "src", root / "out", "--size", 16, "--shard-size", 10, "--quiet")
    _write_stats(root / "out", 16, [1, 1, 1], np.eye(3))
    return root / "out"


@pytest.mark.parametrize("backend", ["dali", REFERENCE_SLOW])  # one DataLoader per rank x batch
def test_eval_epoch_sees_every_sample_exactly_once(unique_label_shards, backend):
    for world in (1, 2, 3, 4):
        for batch in (1, 3, 5, 8):
            seen = []
            for rank in range(world):
                opt = opts(batch_size=batch, num_threads=1, crop=16, backend=backend, rank=rank, world=world)
                for x, y in EvalLoader(unique_label_shards, *opt, split="train"):
                    assert len(y) <= batch and x.shape[0] == len(y)
                    seen += y.tolist()
            assert sorted(seen) == list(range(37)), (backend, world, batch)


@pytest.mark.slow  # 24 loader epochs per backend
@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_ranks_read_disjoint_parts_that_cover_the_split(unique_label_shards, backend):
    for world in (1, 2, 3):
        for batch in (1, 4):
            for epoch in (0, 1):
                seen = []
                for rank in range(world):
                    opt = opts(
                        batch_size=batch, num_threads=2, crop=12, backend=backend, rank=rank, world=world
                    )
                    loader = TrainLoader(unique_label_shards, *opt)
                    batches = list(loader.epoch(epoch))
                    assert len(batches) == loader.steps_per_epoch == 37 // (world * batch)
                    assert all(len(y) == batch for _, y in batches)
                    seen += [v for _, y in batches for v in y.tolist()]
                # disjoint, and at most one batch per rank left out of the 37
                assert len(seen) == len(set(seen)) > 37 - world * batch, (backend, world, batch, epoch)


def test_parse_labels():
    text = torch.tensor([[55, 0, 0], [49, 50, 51], [48, 0, 0]], dtype=torch.uint8)
    assert parse_labels(text).tolist() == [7, 123, 0]


def test_clear_errors_for_missing_stats_and_index(unique_label_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(unique_label_shards, out)
    (out / "stats.json").unlink()
    with pytest.raises(StatsError, match="stats.json: missing; run `alexprep pca-stats"):
        TrainLoader(out, *opts(batch_size=2, crop=12))
    (out / "train" / "train-000001.idx").unlink()
    with pytest.raises(DatasetError, match=r"train-000001.idx: index file missing"):
        EvalLoader(out, *opts(batch_size=2, crop=12, normalization="channel", lighting="off"), split="train")


@pytest.mark.parametrize("backend", ["dali", REFERENCE_SLOW])
def test_resume_mid_epoch_yields_the_tail_of_the_full_epoch(unique_label_shards, backend):
    for rank, world in ((0, 1), (1, 2)):
        opt = opts(batch_size=3, num_threads=2, crop=12, backend=backend, rank=rank, world=world)
        loader = TrainLoader(unique_label_shards, *opt)
        full = [(x.clone(), y.clone()) for x, y in loader.epoch(2)]
        assert len(full) == loader.steps_per_epoch
        assert not torch.equal(full[0][0], full[1][0])  # distinct batches, not one reused buffer
        for k in (1, loader.steps_per_epoch - 1, loader.steps_per_epoch):
            tail = list(TrainLoader(unique_label_shards, *opt).epoch(2, start_step=k))
            assert len(tail) == len(full) - k
            for (x, y), (fx, fy) in zip(tail, full[k:], strict=True):
                assert torch.equal(x, fx) and torch.equal(y, fy), (backend, rank, k)
    with pytest.raises(ValueError, match="start_step"):
        next(loader.epoch(0, start_step=loader.steps_per_epoch + 1))


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_cuda_convnet_divides_the_noisy_training_image_by_1_1(unique_label_shards, backend):
    base = dict(batch_size=4, num_threads=1, crop=12, backend=backend, normalization="channel")
    plain, _ = next(TrainLoader(unique_label_shards, *opts(**base)).epoch(3))
    divided, _ = next(TrainLoader(unique_label_shards, *opts(**base, lighting_scale_div=1.1)).epoch(3))
    torch.testing.assert_close(divided * 1.1, plain, atol=1e-4, rtol=1e-5)
    assert plain.abs().max() > 1  # the comparison is not between zeros
    # eval has no colour noise, so nothing to undo there; without noise the option is refused
    x, _ = next(iter(EvalLoader(unique_label_shards, *opts(**base, lighting_scale_div=1.1), split="train")))
    assert x.shape[1:] == (3, 12, 12)
    with pytest.raises(ValueError, match=r"--lighting-scale-div \(lighting_scale_div\) = 1.1 divides after"):
        TrainLoader(unique_label_shards, *opts(**base, lighting="off", lighting_scale_div=1.1))


@pytest.mark.parametrize("backend", ["dali", "reference"])
@pytest.mark.parametrize("normalization", ["mean-image", "channel"])
def test_one_user_image_is_what_the_eval_loader_sees(imagenet_64, tmp_path, backend, normalization):
    from pipeline.single import UnusableImage, image_input
    from tests.conftest import IMAGENET

    names = sorted(p.name for p in IMAGENET.glob("*.JPEG"))[:3]
    (tmp_path / "src").mkdir()
    for n in names:
        shutil.copy(IMAGENET / n, tmp_path / "src" / n)
    out = tmp_path / "out"
    alexprep("shard", tmp_path / "src", out, "--label-from-name", "--split", "val", "--quiet")
    for f in ("stats.json", "mean_image.npy"):
        shutil.copy(imagenet_64 / f, out / f)
    stats = load_stats(out)
    opt = opts(batch_size=3, num_threads=1, backend=backend, normalization=normalization)
    (x, y), *_ = EvalLoader(out, *opt, split="val", ten_crop=True)
    wnids = [c["wnid"] for c in json.loads((out / "classes.json").read_text())]
    for i, label in enumerate(y.tolist()):
        path = next(tmp_path / "src" / n for n in names if n.startswith(wnids[label]))
        rgb, one = image_input(path, stats, 224, True, normalization)
        assert rgb.shape == (256, 256, 3) and one.shape == (1, 10, 3, 224, 224)
        torch.testing.assert_close(one[0], x[i], atol=1e-3, rtol=0)
        _, centre = image_input(path.read_bytes(), stats, 224, False, normalization)
        torch.testing.assert_close(centre[0], x[i, 8], atol=1e-3, rtol=0)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(UnusableImage, match="bad.jpg: "):
        image_input(tmp_path / "bad.jpg", stats, 224, False)


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_a_damaged_stored_jpeg_is_named_not_a_crash(unique_label_shards, tmp_path, backend):
    from pipeline.loader import DamagedSampleError
    from shards import layout
    from shards.index import read_index

    out = tmp_path / "damaged"
    shutil.copytree(unique_label_shards, out)
    tar = out / "train" / "train-000001.tar"
    jpg = next(m for m in read_index(layout.idx_path(tar))[2] if m.ext == "jpg")
    with open(tar, "r+b") as f:  # the JPEG header zeroed after sharding: no decoder reads it
        f.seek(jpg.offset)
        f.write(bytes(16))
    opt = opts(batch_size=4, num_threads=2, crop=12, backend=backend)
    key = jpg.name.split(".")[0]
    where = rf"{tar}: sample {key}: the stored JPEG does not decode" if backend == "reference" else None
    where = where or rf"{out}/train: reading the shards failed \(.+\); .* run `alexprep verify {out}`"
    began = time.monotonic()
    with pytest.raises(DamagedSampleError, match=where):
        list(TrainLoader(out, *opt).epoch(0))
    with pytest.raises(DamagedSampleError, match=where):
        list(EvalLoader(out, *opt, split="train"))
    # not a speed figure but a stall: workers shut down from a gc pass were each waited on for
    # 5 s (torch 2.13), so the error reached the user 20 s late; now about half a second
    assert time.monotonic() - began < 8


@pytest.mark.parametrize("backend", ["dali", REFERENCE_SLOW])
def test_bench_measure_runs_across_one_step_epochs(unique_label_shards, backend):
    from pipeline.bench import cpu_efficiency, measure

    opt = opts(batch_size=30, num_threads=1, crop=12, backend=backend)
    loader = TrainLoader(unique_label_shards, *opt)
    assert loader.steps_per_epoch == 1  # the case that used to loop forever
    m = measure(loader, batches=3, warmup=1)
    assert m["images"] == 90 and m["img_per_s"] > 0 and m["steps_per_epoch"] == 1
    c = cpu_efficiency(loader, epochs=2)
    assert c["images"] == 60 and c["cpu_seconds"] > 0
    with pytest.raises(ValueError, match="batches 0 must be >= 1"):
        measure(loader, batches=0)


@pytest.mark.parametrize("backend", ["dali", REFERENCE_SLOW])
def test_train_rate_times_the_real_step_and_counts_timed_epoch_starts(unique_label_shards, backend):
    import itertools

    from pipeline.bench import Epochs
    from trainer.bench import train_rate
    from trainer.config import TrainConfig
    from trainer.distributed import Env
    from trainer.train import feed

    cfg = TrainConfig.of(
        data=str(unique_label_shards), arch="cifar", num_classes=37, crop=16, global_batch=30, loader=backend
    )
    env = Env(0, 1, 0, [torch.device("cpu")], batch=30)
    loader = TrainLoader(unique_label_shards, cfg.loader, feed(cfg, env))
    assert loader.steps_per_epoch == 1  # each timed step starts an epoch: all of them are counted
    rate = train_rate(cfg, env, Epochs(loader), warm=1, steps=2)
    assert rate.starts == 2 and rate.img_per_s > 0 and 0 < rate.cpu_seconds
    assert rate.img_per_s == pytest.approx(60 / rate.seconds)
    x, y = next(iter(loader.epoch(0)))
    synthetic = train_rate(cfg, env, itertools.repeat((x, y)), warm=1, steps=2)
    assert synthetic.starts == 0 and synthetic.img_per_cpu_s > 0
    with pytest.raises(ValueError, match="warm 0"):
        train_rate(cfg, env, Epochs(loader), warm=0, steps=2)
