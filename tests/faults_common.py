"""Small generated datasets for the fault tests (tests/test_faults_*.py): known images, real shards."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tests.conftest import alexprep
from trainer.config import TrainConfig

CIFAR3 = {"arch": "cifar", "num_classes": 3, "crop": 32}
RUN = TrainConfig.of(**CIFAR3).to_dict()


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def make_source(src: Path, train: int = 8, val: int = 1, classes: int = 3) -> Path:
    """SRC/train|val/c<k>/<i>.jpg: plain colours that differ per class and image."""
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            (src / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (src / split / f"c{c}" / f"{i}.jpg").write_bytes(jpeg((80 * c + 10, 9 * i + 5, 100)))
    return src


def make_dataset(root: Path, *shard_args: object, stats: bool = True, **source: int) -> Path:
    """A sharded 32px dataset (with pca-stats) of `make_source`'s images under `root`."""
    src = make_source(root / "src", **source)
    out = root / "shards"
    alexprep("shard", src, out, "--size", 32, "--workers", 1, "--quiet", *shard_args)
    if stats:
        alexprep("pca-stats", out, "--workers", 1, "--quiet")
    return out


def cifar_checkpoint(path: Path, poison: str | None = None) -> Path:
    """A loadable checkpoint of the 3-class CIFAR net; `poison`: a weight to set one NaN in."""
    import torch

    from trainer.model import ModelConfig, build_model

    torch.manual_seed(0)
    weights = build_model(ModelConfig.from_dict(CIFAR3)).state_dict()
    if poison:
        weights[poison].view(-1)[0] = float("nan")
    torch.save({"model_config": CIFAR3, "model": weights, "config": RUN}, path)
    return path
