"""DALI pipelines: shards -> decoded, augmented, normalised NCHW batches, on the GPU or the CPU.

One graph for both devices: with a GPU, JPEGs are decoded by nvJPEG (`device="mixed"`, with
`hw_decoder_load` of them on the A100/H100 hardware decoder) and every image op runs on the GPU;
with `device_id=None` the same operators run on the CPU. The random draws (crop position, flip,
lighting alpha) are CPU argument inputs either way; a test can feed them from outside
(`draws=`) to compare the output with `augment.reference_augment` pixel for pixel.

What is computed, per image: crop_x,y(image - mean image + M @ alpha), mirrored, CHW. The paper
subtracts the mean activity from each pixel of the 256x256 image, and PCA lighting adds one RGB
shift to every pixel, so both commute with cropping. That lets the training graph decode only
the 224x224 window (`image_crop`), fold the lighting shift into `crop_mirror_normalize`'s
per-image mean, and subtract the same window of the mean image: no full-size float image is
ever made.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from pipeline.augment import LIGHTING_STD, Normalization, eval_windows
from pipeline.config import LoaderConfig

LABEL_BYTES = 8  # `.cls` holds the class index as text; up to 8 digits
READER_NAME = "Reader"


def _read(tars, idxs, shard_id, num_shards, train, initial_fill, mmap: bool):
    """The shards' `.jpg` and `.cls` members. `mmap` False: plain file reads (`dont_use_mmap`)
    instead of mapping the tars: a shard truncated while mapped is a SIGBUS that kills the
    process with no message; read, it is a short read that DALI reports as an error, which the
    loader turns into one line naming the split (and network filesystems map poorly anyway)."""
    return fn.readers.webdataset(
        paths=[utf8_path(p) for p in tars],
        index_paths=[utf8_path(p) for p in idxs],
        ext=["jpg", "cls"],
        missing_component_behavior="error",
        random_shuffle=train,
        initial_fill=initial_fill,
        shard_id=shard_id,
        num_shards=num_shards,
        pad_last_batch=not train,  # eval: pad instead of wrapping, the iterator trims the pad
        stick_to_shard=not train,
        dont_use_mmap=not mmap,
        name=READER_NAME,
    )


def utf8_path(path: str) -> str:
    """A path as DALI must get it, UTF-8 text. Under a non-UTF-8 locale (LANG=C without UTF-8
    mode) Python holds a non-ASCII name as surrogates, which DALI refuses ("Unsupported argument
    type"); the name's bytes, decoded as UTF-8, name the same file."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"{raw.decode('utf-8', 'backslashreplace')}: DALI opens only UTF-8 paths; rename the "
            "folder or use --loader reference"
        ) from None


def _window(crop: int, x, y) -> dict:  # noqa: ANN001
    """A crop x crop window at relative (x, y): numbers, or per-sample DALI nodes."""
    return dict(crop=(crop, crop), crop_pos_x=x, crop_pos_y=y)


def _labels(cls):
    """Text class ids padded with NUL to LABEL_BYTES; `loader.parse_labels` turns them to int64."""
    return fn.pad(cls, fill_value=0, axes=[0], shape=[LABEL_BYTES])


def _decoder(gpu: bool, hw_decoder_load: float) -> dict:
    return dict(device="mixed", hw_decoder_load=hw_decoder_load) if gpu else dict(device="cpu")


def _mean_image(mean_image: np.ndarray, gpu: bool):
    """The per-pixel mean image as a constant node."""
    h, w, c = mean_image.shape
    return fn.constant(
        fdata=mean_image.ravel().tolist(),
        shape=[h, w, c],
        dtype=types.FLOAT,
        layout="HWC",
        device="gpu" if gpu else "cpu",
    )


def _normalize(images, shift_neg, mean_image, channel_std, gpu: bool, window: dict, **cmn):  # noqa: ANN001
    """(image + shift - mean) / std, mirrored, CHW, cast: one `crop_mirror_normalize`.

    `images` is already the crop window (train) or the whole image with `window` the crop to
    take (eval). With the paper's per-pixel mean, the mean image goes through the same window
    and mirror and is subtracted from the result.
    """
    std = [1.0, 1.0, 1.0] if channel_std is None else [float(v) for v in channel_std]
    if mean_image is None:
        return fn.crop_mirror_normalize(images, mean=shift_neg, std=std, **cmn, **window.get("image", {}))
    image = window.get("image", {})
    out = fn.crop_mirror_normalize(images, mean=shift_neg, std=std, **cmn, **image)
    mean = fn.crop_mirror_normalize(_mean_image(mean_image, gpu), **cmn, **window["mean"])
    return out - mean


def _shift_neg(alpha, lighting: np.ndarray | None, channel_mean: np.ndarray | None):
    """(channel mean or 0) - M @ alpha, per image, via coord_transform on the 3-vector alpha."""
    m = np.zeros((3, 3)) if lighting is None else -lighting
    t = np.zeros(3) if channel_mean is None else channel_mean
    shift = fn.coord_transform(alpha, M=m.ravel().tolist(), T=[float(v) for v in t])
    return fn.reshape(shift, shape=[3])


def _random_crop_decode(jpg, cfg: LoaderConfig, size: int, crop: int, gpu: bool, draws):  # noqa: ANN001, ANN202
    """The training graph's decode: a random crop x crop window of each JPEG, decoded alone
    (`image_crop`), and the draws (x, y, flip, lighting alpha) the rest of the graph uses."""
    if draws is None:
        steps = size - crop
        positions = [i / steps for i in range(steps + 1)] if steps else [0.0]  # whole pixels
        x = fn.random.uniform(values=positions)
        y = fn.random.uniform(values=positions)
        flip = fn.random.coin_flip(probability=0.5 if cfg.mirror else 0.0)
        alpha = fn.random.normal(shape=[1, 3], stddev=LIGHTING_STD)
    else:
        x, y, flip, alpha = fn.external_source(source=draws, num_outputs=4, batch=True)
    window = _window(crop, x, y)
    images = fn.decoders.image_crop(
        jpg, output_type=types.RGB, **window, **_decoder(gpu, cfg.hw_decoder_load)
    )
    return images, (x, y, flip, alpha)


@pipeline_def(enable_conditionals=False)
def crop_decode_pipeline(
    tars: list[str], idxs: list[str], *, cfg: LoaderConfig, size: int, crop: int, gpu: bool
):
    """The training graph's read and random-crop decode alone: bench/gpu_check.py's decode rates
    (with and without the hardware decoder: `cfg.hw_decoder_load`) are the training graph's."""
    jpg, _cls = _read(tars, idxs, 0, 1, True, cfg.shuffle_buffer, cfg.mmap)
    return _random_crop_decode(jpg, cfg, size, crop, gpu, None)[0]


@pipeline_def(enable_conditionals=False)
def train_pipeline(
    tars: list[str],
    idxs: list[str],
    *,
    part: tuple[int, int],
    cfg: LoaderConfig,
    norm: Normalization,
    lighting: np.ndarray | None,
    size: int,
    crop: int,
    gpu: bool,
    draws: Callable | None = None,
    mean_on_host: bool = False,
):
    """Random crop + mirror + PCA lighting + mean subtraction (paper, section 4.1), times `scale`.

    `mean_on_host` (the CPU graph): the per-pixel mean image is left out and the crop windows
    (x, y, flip) are returned beside the batch, for `host.subtract_mean_windows` to subtract it
    in torch: DALI's CPU arithmetic on a per-sample cropped constant costs ~30 % of this graph,
    an in-place torch subtraction of a strided view a fraction of that. The GPU graph keeps it.
    """
    jpg, cls = _read(tars, idxs, *part, True, cfg.shuffle_buffer, cfg.mmap)
    images, (x, y, flip, alpha) = _random_crop_decode(jpg, cfg, size, crop, gpu, draws)
    window = _window(crop, x, y)
    out = _normalize(
        images,
        _shift_neg(alpha, lighting, norm.channel_mean),
        None if mean_on_host else norm.mean_image,
        norm.channel_std,
        gpu,
        {"mean": window},
        mirror=flip,
        scale=1.0 / cfg.lighting_scale_div,
        dtype=types.FLOAT,
        output_layout="CHW",
    )
    if mean_on_host:
        return out, _labels(cls), x, y, flip
    return out, _labels(cls)


@pipeline_def(enable_conditionals=False)
def eval_pipeline(
    tars: list[str],
    idxs: list[str],
    *,
    part: tuple[int, int],
    cfg: LoaderConfig,
    norm: Normalization,
    crop: int,
    ten_crop: bool,
    gpu: bool,
):
    """Centre crop, or the paper's 10 crops (4 corners + centre, each mirrored) as [10, C, H, W]."""
    jpg, cls = _read(tars, idxs, *part, False, 1, cfg.mmap)
    images = fn.decoders.image(jpg, output_type=types.RGB, **_decoder(gpu, cfg.hw_decoder_load))
    mean = [0.0, 0.0, 0.0] if norm.channel_mean is None else [float(v) for v in norm.channel_mean]
    crops = [
        _normalize(
            images,
            mean,
            norm.mean_image,
            norm.channel_std,
            gpu,
            {"image": _window(crop, x, y), "mean": _window(crop, x, y)},
            mirror=int(m),
            dtype=types.FLOAT,
            output_layout="CHW",
        )
        for x, y, m in eval_windows(ten_crop)
    ]
    return (fn.stack(*crops) if ten_crop else crops[0]), _labels(cls)
