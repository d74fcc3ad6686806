"""The per-pixel mean image subtracted in torch, for the CPU training graph (`mean_on_host`).

Each sample's window of the mean image (the crop's own window, mirrored with it) is a strided
view of one of two constants (the mean image and its mirror image, CHW), subtracted in place
from the batch DALI handed over: one pass over the batch, no per-sample copies. It runs on one
torch thread: per-sample ops of this size gain nothing from more, and with DALI's threads busy
on the same cores a second torch thread only waits (measured: 2 threads ran 50-100x slower
on the loaded 2-core machine).
"""

from __future__ import annotations

import numpy as np
import torch

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
