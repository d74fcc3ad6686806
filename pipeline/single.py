"""One image -> model input, exactly as the eval loaders see a stored sample.

Figures and predictions on a user's own file must match what the network was evaluated on: the
offline step `alexprep shard` applied (shorter side to the stored size, centre crop, JPEG at
the stored quality, decoded again), then the val transform (centre crop or the paper's 10
crops, normalised as the run was). The crops come from `augment.eval_crops`, the same code as
the reference eval loader, which the tests hold equal to the DALI eval pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.augment import Normalization, Stats, eval_crops
from preprocess.image import (
    IMAGE_SIZE,
    JPEG_QUALITY,
    MAX_BYTES,
    MAX_PIXELS,
    RejectedImage,
    process,
    process_file,
)

LIMITS = (MAX_PIXELS, MAX_BYTES)  # alexprep shard's bounds on one source image


class UnusableImage(ValueError):
    """The file cannot be read or decoded as an image; the message names it and says why."""


def stored_rgb(
    source: Path | bytes, size: int = IMAGE_SIZE, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES
) -> np.ndarray:
    """What `alexprep shard` would store for this file or these bytes, decoded: HWC uint8 RGB.

    The same limits as `alexprep shard` (--max-pixels, --max-bytes) keep a decompression bomb a
    one-line error."""
    import cv2

    try:
        enc = (
            process(source, size, JPEG_QUALITY, max_pixels)
            if isinstance(source, bytes)
            else process_file(str(source), size, max_bytes=max_bytes, max_pixels=max_pixels)
        )
    except RejectedImage as e:
        name = "image bytes" if isinstance(source, bytes) else str(source)
        raise UnusableImage(f"{name}: {e}") from None
    bgr = cv2.imdecode(np.frombuffer(enc.jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_input(
    source: Path | bytes,
    stats: Stats,
    crop: int,
    ten_crop: bool,
    normalization: str = "mean-image",
    size: int = IMAGE_SIZE,
    limits: tuple[int, int] = LIMITS,
) -> tuple[np.ndarray, torch.Tensor]:
    """(the stored RGB image, the network input [1, C, H, W] or [1, 10, C, H, W]);
    `limits`: (max pixels, max bytes) of the source, as `alexprep shard`'s."""
    rgb = stored_rgb(source, size, *limits)
    x = torch.from_numpy(
        eval_crops(rgb, Normalization.of(stats, normalization), crop=crop, ten_crop=ten_crop)
    )
    return rgb, (x[None] if ten_crop else x)
