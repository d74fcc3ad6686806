"""Figure 3: conv1's kernels large enough to read, titled, each tower labelled, in the run folder."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from trainer.cli import main
from trainer.figures import conv1_kernels, kernel_figure, kernel_grid, kernel_scale
from trainer.model import AlexNet

MARGIN, TITLE_H, LABEL_H = 8, 24, 18  # kernel_figure's layout


def _has_text(img: np.ndarray, rows: slice) -> bool:
    return bool((img[rows] < 128).all(-1).any())  # dark pixels: drawn text on the white margin


def test_small_kernels_are_scaled_up_and_alexnets_stay_as_they_were():
    assert kernel_scale(5) * 5 >= 44 and kernel_scale(11) == 4 and kernel_scale(3) * 3 >= 44


def test_cifar_kernels_titled_and_pixel_exact(demo_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output is the run folder, not the current one
    result = CliRunner().invoke(main, ["kernels", str(demo_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    out = demo_run / "fig3.png"
    assert f"-> {out}" in result.stdout and not list(tmp_path.iterdir())
    img = np.asarray(Image.open(out).convert("RGB"))
    (towers,) = [conv1_kernels(torch.load(demo_run / "best.pt", weights_only=True))]
    grid = np.asarray(kernel_grid(towers, scale=kernel_scale(5)))
    assert grid.shape[1] >= 8 * 45  # 8 kernels a row, each 45 px (5 x 9), not 20 as at --scale 4
    top = TITLE_H + LABEL_H
    assert (img[top : top + grid.shape[0], MARGIN : MARGIN + grid.shape[1]] == grid).all()
    assert _has_text(img, slice(0, TITLE_H)) and _has_text(img, slice(TITLE_H, top))
    assert img.shape[0] == top + grid.shape[0] + MARGIN


def test_two_towers_each_labelled_above_its_block():
    towers = conv1_kernels({"model": AlexNet().state_dict()})
    assert [len(t) for t in towers] == [48, 48]
    img = np.asarray(kernel_figure(towers, "Figure 3"))
    block = np.asarray(kernel_grid([towers[0]]))
    second = TITLE_H + LABEL_H + block.shape[0]
    assert (img[TITLE_H + LABEL_H : second, MARGIN : MARGIN + block.shape[1]] == block).all()
    assert _has_text(img, slice(TITLE_H, TITLE_H + LABEL_H)) and _has_text(
        img, slice(second, second + LABEL_H)
    )
    below = np.asarray(kernel_grid([towers[1]]))
    start = second + LABEL_H
    assert (img[start : start + below.shape[0], MARGIN : MARGIN + below.shape[1]] == below).all()
