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

import os
import re
import stat
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from preprocess.defaults import IMAGE_SIZE, JPEG_QUALITY, MAX_BYTES, MAX_PIXELS  # noqa: F401 (re-exported)

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG), CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
_DECODE_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION


class RejectedImage(Exception):
    """A source file that cannot become a sample; the message is the reason recorded."""


@dataclass(frozen=True)
class Encoded:
    """A processed sample: the stored JPEG and the source's original size."""

    jpeg: bytes
    width: int
    height: int


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, reading no pixel data."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        (length,) = struct.unpack_from(">H", data, i + 2)
        if marker in _JPEG_SOF and i + 9 <= n:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        i += 2 + length
    return None


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker; not a stuffed 0xFF or a restart


def jpeg_complete(data: bytes) -> bool:
    """Whether the JPEG's own structure reaches its end-of-image marker (EOI, FFD9).

    Walks the segments and, after each start of scan, the entropy-coded data to the next
    marker, so what follows the EOI does not matter: a trailing newline or NULs, or the video
    of a motion photo appended after the image, leave a complete JPEG complete. A file that
    ends inside a segment or a scan is truncated.
    """
    i, n = 2, len(data)
    while i + 2 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return True
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        if i + 4 > n:
            return False
        (length,) = struct.unpack_from(">H", data, i + 2)
        i += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _NEXT_MARKER.search(data, i)
            if found is None:
                return False
            i = found.start()  # the last 0xFF before the marker (fill bytes skipped)
    return False


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header states it, without decoding; None if unknown.

    JPEG and PNG (nearly all of ImageNet) are parsed here; other formats through Pillow's
    `Image.open`, which also reads only the header.
    """
    if data[:2] == _JPEG_SOI:
        return _jpeg_size(data)
    if data[:8] == _PNG_SIG and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    try:
        import io

        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return None
    Image.MAX_IMAGE_PIXELS = None  # our own bound applies, with our own message
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse is "unknown"
        return None


def check_size(width: int, height: int, size: int, max_pixels: int) -> None:
    """Reject what would exceed `max_pixels` decoded, or once resized (a 1 x 65000 strip)."""
    if width <= 0 or height <= 0:
        raise RejectedImage(f"header states an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise RejectedImage(
            f"{width}x{height} is {width * height:,} pixels, over the --max-pixels limit {max_pixels:,}"
        )
    resized = size * size * max(width, height) // min(width, height)
    if resized > max_pixels:
        raise RejectedImage(
            f"{width}x{height}: aspect ratio too extreme (would resize to {resized:,} pixels, "
            f"over --max-pixels {max_pixels:,})"
        )


def decode(data: bytes, size: int = IMAGE_SIZE, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Decode file bytes to (HxWx3 BGR uint8, original width, original height).

    Raises RejectedImage with a reason. The pixel bound is checked from the header first. A JPEG
    whose shorter side is at least 2x/4x/8x `size` is decoded at 1/2, 1/4, 1/8 scale by
    libjpeg's scaled IDCT (nearly free, and an antialiasing downscale in itself); INTER_AREA
    then makes the last, smaller step.
    """
    if not data:
        raise RejectedImage("empty file")
    is_jpeg = data[:2] == _JPEG_SOI
    if is_jpeg and not jpeg_complete(data):
        # libjpeg "recovers" truncated files by padding them with grey; that is not our image.
        raise RejectedImage("truncated JPEG (its data ends before the end-of-image marker)")
    dims = image_size(data)
    if dims is None:
        raise RejectedImage("not a decodable image (no image header found)")
    width, height = dims
    check_size(width, height, size, max_pixels)
    flags = cv2.IMREAD_COLOR
    if is_jpeg:
        flags = next((f for k, f in _REDUCED if min(width, height) >= k * size), cv2.IMREAD_COLOR)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags | _DECODE_FLAGS)
    except cv2.error as e:
        raise RejectedImage(f"not a decodable image ({str(e).strip().splitlines()[-1]})") from None
    if image is None or image.size == 0:
        raise RejectedImage("not a decodable image")
    return image, width, height


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central square (side = the shorter side), scaled to size x size.

    The same geometry as the paper's "rescale the shorter side to 256, then crop the central
    256x256" (the same scale; the crop's position can differ by under one output pixel), but
    cropping first resizes only the pixels that are kept: 25 % less work for a 4:3 image.
    """
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    # INTER_AREA averages when shrinking (no aliasing); cubic when enlarging small images.
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RejectedImage("JPEG encoder failed")
    return buf.tobytes()


def process(
    data: bytes, size: int = IMAGE_SIZE, quality: int = JPEG_QUALITY, max_pixels: int = MAX_PIXELS
) -> Encoded:
    """Source file bytes -> stored sample (raises RejectedImage with the reason)."""
    image, w, h = decode(data, size, max_pixels)
    try:
        return Encoded(encode_jpeg(resize_center_crop(image, size), quality), w, h)
    except cv2.error as e:
        raise RejectedImage(f"resize/encode failed ({str(e).strip().splitlines()[-1]})") from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_file(path: str, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is a RejectedImage.

    Opened non-blocking (a FIFO must not hang the run) and checked with fstat on the open
    descriptor, so what is read is what was checked: FIFOs, devices (/dev/zero), sockets and
    folders are rejected; link loops and dangling links fail to open, with the system's reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise RejectedImage(f"unreadable: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RejectedImage(f"not a regular file ({_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise RejectedImage(f"file is {st.st_size:,} bytes, over the --max-bytes limit {max_bytes:,}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise RejectedImage(f"unreadable: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # grew while we read
        raise RejectedImage(f"file is over the --max-bytes limit {max_bytes:,}")
    return data


def process_file(
    path: str,
    size: int = IMAGE_SIZE,
    quality: int = JPEG_QUALITY,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> Encoded:
    """Read and process one file; an unreadable or unsuitable file is a RejectedImage, not a crash."""
    return process(read_file(path, max_bytes), size, quality, max_pixels)
