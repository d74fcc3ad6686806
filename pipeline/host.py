"""The CPU training graph's hand-off to torch, with the per-pixel mean image subtracted in it.

DALI's CPU graph stops at the lit, cropped, mirrored float CHW batch and the crop windows
(`mean_on_host`). `host_batches` takes DALI's output buffer as a torch tensor (DLPack, no copy)
and subtracts each sample's mean window from it in place: one pass over the batch. DALI's
dynamic executor (the default) keeps an output buffer alive while anything refers to it and
returns it to its pool afterwards, so the yielded tensor owns its memory like any other and
no fresh 77 MB buffer is page-faulted in per batch of 128. The usual route — `DALIGenericIterator`
copies the batch into a new torch tensor, then the subtraction passes over it again — cost
~45 % more time on the consumer thread here.

Each sample's window of the mean image (the crop's own window, mirrored with it) is a strided
view of one of two constants (the mean image and its mirror image, CHW): no per-sample copies.
It runs on one torch thread: per-sample ops of this size gain nothing from more, and with
DALI's threads busy on the same cores a second torch thread only waits (measured: 2 threads ran
50-100x slower on the loaded 2-core machine).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from pipeline.augment import crop_origin


class MeanWindows:
    """`subtract(batch, px, py, flip)`: batch[i] -= scale * mean window i, in place."""

    def __init__(self, mean_image: np.ndarray, crop: int, scale: float = 1.0):
        chw = torch.from_numpy(np.ascontiguousarray(mean_image.transpose(2, 0, 1), np.float32)) * scale
        self.mean, self.mirrored = chw.contiguous(), chw.flip(-1).contiguous()
        self.size, self.crop = mean_image.shape[1], crop

    def windows(self, px: torch.Tensor, py: torch.Tensor, flip: torch.Tensor) -> list[torch.Tensor]:
        s, c = self.size, self.crop
        out = []
        for x, y, m in zip(
            px.reshape(-1).tolist(), py.reshape(-1).tolist(), flip.reshape(-1).tolist(), strict=True
        ):
            ox, oy = crop_origin(x, s, c), crop_origin(y, s, c)
            if m:  # output column j is image column ox + c - 1 - j: the mirror's column s - ox - c + j
                out.append(self.mirrored[:, oy : oy + c, s - ox - c : s - ox])
            else:
                out.append(self.mean[:, oy : oy + c, ox : ox + c])
        return out

    def subtract(
        self, batch: torch.Tensor, px: torch.Tensor, py: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for sample, window in zip(batch, self.windows(px, py, flip), strict=True):
                sample.sub_(window)
        finally:
            torch.set_num_threads(threads)
        return batch


def _view(tensor_list) -> torch.Tensor:  # noqa: ANN001
    """A DALI CPU batch as a torch tensor over the same memory, which it keeps alive."""
    return from_dlpack(tensor_list.as_tensor().__dlpack__())


def host_batches(pipe, steps: int, means: MeanWindows) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    """`steps` (image, label text) batches of a built `train_pipeline(..., mean_on_host=True)`."""
    for _ in range(steps):
        data, label, px, py, flip = pipe.run()
        x = _view(data)
        if not pipe.exec_dynamic:  # the legacy executor recycles its buffers: take a copy
            x = x.clone()
        yield means.subtract(x, _view(px), _view(py), _view(flip)), _view(label).clone()
