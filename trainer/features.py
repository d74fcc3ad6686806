"""The last hidden layer of every sample of a split, extracted once and cached beside the
checkpoint (Figure 4's neighbour search reads it).

The cache is trusted only as far as it checks out: its header (n rows of float32), every value
finite, and its first rows equal to the model's features computed again; anything else is
computed again with a warning. It is written with plain writes (a full disk is an error naming
the cache, never a SIGBUS as with a written memmap) and, where its folder cannot be written,
the features are kept in memory instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from shards import layout
from shards.verify import file_sha256
from trainer.errors import FigureError

_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def feature_cache(checkpoint: Path, data: Path, split: str) -> Path:
    """Where the split's features are cached: beside the checkpoint, keyed on its content and
    the split's.

    The key hashes the checkpoint's bytes and the split's manifest (its images by SHA-256, in
    their order): a checkpoint overwritten by a later epoch (same name, new weights), or another
    dataset's split of the same name (other images, the training statistics copied in), never
    reuses the features of the other.
    """
    weights, images = (file_sha256(p) for p in (checkpoint, data / split / layout.MANIFEST))
    # the images' part of the name first: a new cache replaces the older ones of the same
    # checkpoint file, split and images (an earlier epoch's), not another dataset's
    return checkpoint.parent / f"features-{checkpoint.stem}-{split}-{images[:8]}-{weights[:16]}.npy"


def extract_features(
    model,  # noqa: ANN001
    data: Path,
    split: str,
    crop: int,
    normalization: str,
    cache: Path,
    batch_size: int = 128,
    progress: bool = True,
    num_threads: int = 4,
) -> np.ndarray:
    """The last hidden layer (fc7, after ReLU; dropout off) of every sample, cached as .npy.

    Rows follow the split's manifest order (the eval reader's order on one rank). The loader
    runs on the device the model is on (a CUDA loader feeding a CPU model crashed). `cache`
    names the checkpoint's and the split's content (`feature_cache`); a new cache replaces older
    caches of the same checkpoint file, split and images.
    """
    from tqdm import tqdm

    from pipeline.loader import EvalLoader, Feed, LoaderConfig

    device = next(model.parameters()).device
    feed = Feed(batch_size=batch_size, crop=crop, rank=0, world=1, device=device.type)
    loader = EvalLoader(
        data, LoaderConfig(normalization=normalization, num_threads=num_threads), feed, split=split
    )
    n = loader.s.written
    model.eval()
    if cache.is_file():
        why, cached = _cache_problem(cache, n, lambda: _first_features(model, loader, device))
        if why is None:
            return cached
        warnings.warn(f"{cache}: damaged feature cache ({why}); computing it again", stacklevel=2)
    layout.remove_stale_tmp(cache.parent)  # what a killed or failed extraction left
    tmp = layout.tmp_path(cache)
    out: _Rows | None = None
    row = 0
    try:
        with torch.no_grad():
            for x, _ in tqdm(
                loader, total=-(-n // batch_size), unit="batch", disable=not progress, desc="features"
            ):
                feats = _features(model, x, device)
                out = out or _Rows(tmp, cache, (n, feats.shape[1]))
                out.write(feats)
                row += len(feats)
        if out is None or row != n:
            raise FigureError(f"{data}/{split}: the loader gave {row} samples, the manifest says {n}")
        bank = out.finish()
    except BaseException:
        if out is not None:
            out.close()
        tmp.unlink(missing_ok=True)
        raise
    if bank is not None:  # kept in memory: nothing written
        return bank
    stem = cache.name.rsplit("-", 1)[0]
    for old in cache.parent.glob(f"{stem}-{'[0-9a-f]' * 16}.npy"):
        if old != cache:
            old.unlink(missing_ok=True)
    return np.load(cache, mmap_mode="r")


class _Rows:
    """The feature rows as they come: appended to the cache's temporary file, or, where the
    cache's folder cannot be written, kept in memory with a warning."""

    def __init__(self, tmp: Path, cache: Path, shape: tuple[int, int]):
        self.tmp, self.cache, self.kept = tmp, cache, None
        try:
            self.f = os.fdopen(layout.open_exclusive(tmp), "wb")
        except OSError as e:
            if e.errno not in _NOT_WRITABLE:
                raise layout.LayoutError(layout.write_problem(cache, e)) from None
            warnings.warn(f"{layout.write_problem(cache, e)}; working without the cache", stacklevel=3)
            self.f, self.kept = None, []
            return
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        with layout.writing(cache):
            np.lib.format.write_array_header_1_0(self.f, {**header, "shape": shape})

    def write(self, feats: np.ndarray) -> None:
        if self.kept is not None:
            self.kept.append(feats)
            return
        with layout.writing(self.cache):
            self.f.write(np.ascontiguousarray(feats, np.float32).tobytes())

    def close(self) -> None:
        """After a failure: the file closed even where its last write fails (a full disk)."""
        if self.f is not None:
            with contextlib.suppress(OSError):
                self.f.close()

    def finish(self) -> np.ndarray | None:
        """The rows in memory, or None once the cache file is in place."""
        if self.kept is not None:
            return np.concatenate(self.kept)
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            os.replace(self.tmp, self.cache)
        except OSError as e:
            if e.errno in layout.WRITE_ERRNOS:
                raise layout.LayoutError(layout.write_problem(self.cache, e)) from None
            raise FigureError(f"{self.cache}: cannot write the feature cache ({e.strerror})") from None
        return None


def _features(model, x: torch.Tensor, device: torch.device) -> np.ndarray:  # noqa: ANN001
    with torch.no_grad():
        return torch.cat([f.float().cpu() for f in model.features(x.to(device))], 1).numpy()


def _first_features(model, loader, device: torch.device) -> np.ndarray:  # noqa: ANN001
    for x, _ in loader:
        return _features(model, x, device)
    return np.zeros((0, 0), np.float32)


def _cache_problem(cache: Path, n: int, first: Callable[[], np.ndarray]) -> tuple[str | None, np.ndarray]:
    """(why the cache is not this model's features of the split's n samples, the cache): its
    header (n rows, float32), every value finite (read in blocks), and its first rows equal to
    the model's features computed again (`first`): an all-zero cache of the right shape is not."""
    try:
        cached = np.load(cache, mmap_mode="r")  # no pickles
    except (OSError, ValueError, EOFError) as e:  # truncated or garbage: it is only a cache
        return f"unreadable: {e.__class__.__name__}", None
    if cached.ndim != 2 or cached.dtype != np.float32 or cached.shape[0] != n:
        return f"{cached.dtype} {cached.shape}, not {n} rows of float32", None
    for o in range(0, n, 65536):
        if not np.isfinite(cached[o : o + 65536]).all():
            return "holds NaN or inf", None
    probe = first()
    if probe.shape[1:] != cached.shape[1:] or not np.allclose(
        cached[: len(probe)], probe, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(probe).max(initial=0)))
    ):
        return "its first rows are not this model's features", None
    return None, cached
