"""Everything a run is configured by, with the paper's values as defaults.

A config file (JSON or TOML, the same keys as the flags with `_` for `-`) can set any field;
flags given on the command line override it. The resolved config is saved in every checkpoint
and in RUN/config.json.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pipeline.augment import CROP_SIZE
from trainer.model import DROPOUT, ModelConfig
from trainer.optim import BATCH_SIZE, EPOCHS, LEARNING_RATE, MAX_DROPS, MOMENTUM, WEIGHT_DECAY


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    # model (section 3)
    arch: str = "alexnet"
    num_classes: int | None = None  # None: from OUT/classes.json
    activation: str = "relu"
    lrn: str = "cuda-convnet"
    pool: str = "overlap"
    towers: int = 2
    extra_conv: bool = False
    dropout: float = DROPOUT
    crop: int = CROP_SIZE  # 224 (conv1 padded by 2) or 227 (conv1 unpadded, Caffe)
    # recipe (section 5)
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    decay_biases: bool = False
    epochs: int = EPOCHS
    patience: int = 3
    max_drops: int = MAX_DROPS
    # data
    train_split: str = "train"
    val_split: str | None = None  # None: val, validation or test, whichever exists
    loader: str = "auto"  # auto (DALI if installed), dali, reference
    lighting: str = "cuda-convnet"
    lighting_scale_div: float = 1.0  # cuda-convnet: 1.1 (divide after colour noise; docs/model.md)
    normalization: str = "mean-image"
    num_threads: int = 4
    seed: int = 0
    steps_per_epoch: int | None = None  # cap, for smoke tests and quick ablations
    # hardware
    device: str = "auto"  # auto, cuda, cpu
    model_parallel: int = 1  # 2: one tower per GPU, as in the paper
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            arch=self.arch,
            num_classes=self.num_classes or 1000,
            activation=self.activation,
            lrn=self.lrn,
            pool=self.pool,
            towers=self.towers,
            extra_conv=self.extra_conv,
            dropout=self.dropout,
            conv1_padding=2 if self.crop == 224 else 0,
            input_size=self.crop,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def load_config_file(path: Path) -> dict:
    """JSON or TOML -> dict of TrainConfig fields; unknown keys are an error."""
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    return data
