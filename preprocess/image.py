"""One source image -> one stored sample: decode, resize the shorter side, centre crop, JPEG.

This is the paper's only offline step (section 2): "rescale the image such that the shorter
side was of length 256, then crop out the central 256x256 patch". Everything random happens
later, on the fly, in `pipeline/`.

Decoding goes through OpenCV (libjpeg-turbo), which covers the real ImageNet quirks:
grayscale and CMYK JPEGs come out as 3-channel colour, a PNG named `.JPEG` is decoded by its
content (the decoder sniffs the signature, not the name), and EXIF orientation is ignored
(`IMREAD_IGNORE_ORIENTATION`), as ImageNet's labels were made on the unrotated pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Section 2 of the paper: shorter side -> 256, central 256x256 patch.
IMAGE_SIZE = 256
JPEG_QUALITY = 90

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


class RejectedImage(Exception):
    """A source file that cannot become a sample; the message is the reason recorded."""


@dataclass(frozen=True)
class Encoded:
    """A processed sample: the stored JPEG and the source's original size."""

    jpeg: bytes
    width: int
    height: int


def decode(data: bytes) -> np.ndarray:
    """Decode file bytes to an HxWx3 BGR uint8 array, or raise RejectedImage with a reason."""
    if not data:
        raise RejectedImage("empty file")
    if data[:2] == _JPEG_SOI and not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        # libjpeg "recovers" truncated files by padding them with grey; that is not our image.
        raise RejectedImage("truncated JPEG (no end-of-image marker)")
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise RejectedImage("not a decodable image")
    return image


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Scale so the shorter side is `size`, then cut the central size x size patch."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        # INTER_AREA averages when shrinking (no aliasing); cubic when enlarging small images.
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top : top + size, left : left + size]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RejectedImage("JPEG encoder failed")
    return buf.tobytes()


def process(data: bytes, size: int = IMAGE_SIZE, quality: int = JPEG_QUALITY) -> Encoded:
    """Source file bytes -> stored sample (raises RejectedImage with the reason)."""
    image = decode(data)
    h, w = image.shape[:2]
    return Encoded(encode_jpeg(resize_center_crop(image, size), quality), w, h)


def process_file(path: str, size: int = IMAGE_SIZE, quality: int = JPEG_QUALITY) -> Encoded:
    """Read and process one file; an unreadable file is a RejectedImage, not a crash."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RejectedImage(f"unreadable: {e.strerror or e}") from None
    return process(data, size, quality)
