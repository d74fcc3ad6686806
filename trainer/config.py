"""Everything a run is configured by, with the paper's values as defaults.

A config file (JSON or TOML, the same keys as the flags with `_` for `-`) can set any field;
flags given on the command line override it. The resolved config is saved in every checkpoint
and in RUN/config.json.

`TrainConfig.check()` refuses a bad value before any work is done, naming the setting both as
the flag and as the config-file key; the checks that need the dataset (class count, crop vs
stored size) are in `trainer.train.resolve_data`.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.augment import CROP_SIZE, LIGHTING_CONVENTIONS, NORMALIZATIONS
from trainer.paper import BATCH_SIZE, DROPOUT, EPOCHS, LEARNING_RATE, MAX_DROPS, MOMENTUM, WEIGHT_DECAY

if TYPE_CHECKING:
    from trainer.model import ModelConfig


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
    dropout_mode: str = "paper"  # "paper": unscaled in training, x(1-p) at test; "inverted": torch's
    init: str = "paper"  # weights N(0, 0.01^2) (section 5); cifar: also "cuda-convnet" (layers-18pct)
    init_from: str | None = None  # fine-tune: start from this run's / checkpoint's weights
    crop: int | None = None  # alexnet: 224 (conv1 padded by 2) or 227 (Caffe); None: from the arch
    # recipe (section 5)
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    decay_biases: bool = False
    epochs: int = EPOCHS
    schedule: str = "plateau"  # plateau: /10 when val error stalls (the paper); step: at lr_steps
    lr_steps: list[int] | None = None  # epochs at which `step` divides the lr by 10
    patience: int = 3
    max_drops: int = MAX_DROPS
    # data
    train_split: str = "train"
    val_split: str | None = None  # None: val, validation or test, whichever exists
    loader: str = "auto"  # auto (DALI if installed), dali, reference
    mmap: bool = True  # DALI memory-maps the shards; False: plain reads (NFS/Lustre, shards that may change)
    lighting: str = "cuda-convnet"
    mirror: bool = True  # random reflections (section 4.1); Figure 1 turns them off
    lighting_scale_div: float = 1.0  # cuda-convnet: 1.1 (divide after colour noise; docs/model.md)
    normalization: str = "mean-image"
    num_threads: int = 4
    seed: int = 0
    steps_per_epoch: int | None = None  # cap, for smoke tests and quick ablations
    # checkpoints
    checkpoint_every: int | None = None  # steps; None: at epoch ends only
    keep: int = 1  # last.pt plus the keep-1 checkpoints before it (and best.pt)
    verify_data: str = "quick"  # shards vs their manifest at start: quick (structure) or full (hashes)
    # hardware
    device: str = "auto"  # auto, cuda, cpu
    model_parallel: int = 1  # 2: one tower per GPU, as in the paper
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False

    def model_config(self) -> ModelConfig:
        from trainer.model import ModelConfig  # torch: only when a model is built

        return ModelConfig(
            arch=self.arch,
            num_classes=self.num_classes or 1000,
            activation=self.activation,
            lrn=self.lrn,
            pool=self.pool,
            towers=self.towers,
            extra_conv=self.extra_conv,
            dropout=self.dropout,
            dropout_mode=self.dropout_mode,
            init=self.init,
            conv1_padding=2 if self.crop == 224 else 0,
            input_size=self.crop if self.crop is not None else CROP_SIZE,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, given: set[str] | None = None) -> None:
        """Refuse the first bad setting (ConfigError naming it); `given`: keys the user set.

        An option the arch ignores is refused when given (or, for a programmatic config, when
        it differs from its default) rather than silently dropped.
        """
        for name, ok, rule in _rules(self):
            if not ok:
                raise ConfigError(f"{_name(name)} = {getattr(self, name)!r}: {rule}")
        unused = {**ARCH_IGNORES.get(self.arch, {}), **SCHEDULE_IGNORES.get(self.schedule, {})}
        for name, why in unused.items():
            if (given is not None and name in given) or getattr(self, name) != _default(name):
                raise ConfigError(f"{_name(name)}: {why}; leave it out")


class ConfigError(ValueError):
    """A setting that cannot work, named as flag and config key."""


CHOICES = {
    "arch": ("alexnet", "cifar"),
    "activation": ("relu", "tanh"),
    "lrn": ("cuda-convnet", "paper", "off"),
    "pool": ("overlap", "nonoverlap"),
    "loader": ("auto", "dali", "reference"),
    "lighting": LIGHTING_CONVENTIONS,
    "normalization": NORMALIZATIONS,
    "device": ("auto", "cuda", "cpu"),
    "schedule": ("plateau", "step"),
    "verify_data": ("quick", "full"),
    "dropout_mode": ("paper", "inverted"),
    "init": ("paper", "cuda-convnet"),
}
ARCH_IGNORES = {
    "cifar": {
        "towers": "--arch cifar has one tower",
        "dropout": "--arch cifar has no dropout",
        "dropout_mode": "--arch cifar has no dropout",
        "extra_conv": "--arch cifar has no extra conv layer",
    }
}
SCHEDULE_IGNORES = {
    "plateau": {"lr_steps": "--schedule plateau drops the lr on validation plateaus, not at fixed epochs"},
    "step": {
        "patience": "--schedule step drops the lr at --lr-steps, not on plateaus",
        "max_drops": "--schedule step drops the lr at --lr-steps, not on plateaus",
    },
}
MAX_LR = 10.0  # far above any rate that trains; above it the first step diverges


def _name(key: str) -> str:
    return f"--{key.replace('_', '-')} ({key})"


def _default(key: str) -> object:
    f = next(f for f in fields(TrainConfig) if f.name == key)
    return f.default if f.default is not MISSING else f.default_factory()


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _rules(c: TrainConfig) -> list[tuple[str, bool, str]]:
    """(key, holds, rule) in flag order; types first, then ranges."""
    rules = [(k, getattr(c, k) in v, f"not one of {', '.join(v)}") for k, v in CHOICES.items()]
    crop_ok = c.crop is None or (c.crop in (224, 227) if c.arch == "alexnet" else 16 <= c.crop <= 4096)
    crop_rule = "alexnet takes 224 or 227" if c.arch == "alexnet" else "cifar takes 16 up to the stored size"
    steps = c.lr_steps
    rules += [
        ("crop", crop_ok, crop_rule),
        ("init", c.init == "paper" or c.arch == "cifar", "cuda-convnet is the cifar net's (layers-18pct)"),
        (
            "num_classes",
            c.num_classes is None or c.num_classes >= 2,
            "must be >= 2 (or left out: from the dataset)",
        ),
        ("towers", c.towers in (1, 2), "must be 1 or 2"),
        ("model_parallel", c.model_parallel in (1, 2), "must be 1 or 2 (one tower per GPU)"),
        ("dropout", _finite(c.dropout) and 0 <= c.dropout < 1, "must be in [0, 1)"),
        ("batch_size", c.batch_size >= 1, "must be >= 1"),
        ("lr", _finite(c.lr) and 0 < c.lr <= MAX_LR, f"must be a finite number in (0, {MAX_LR:g}]"),
        (
            "lighting_scale_div",
            _finite(c.lighting_scale_div) and 1 <= c.lighting_scale_div <= 2,
            "must be in [1, 2] (cuda-convnet: 1.1)",
        ),
        ("momentum", _finite(c.momentum) and 0 <= c.momentum < 1, "must be in [0, 1)"),
        ("weight_decay", _finite(c.weight_decay) and 0 <= c.weight_decay < 1, "must be in [0, 1)"),
        ("epochs", c.epochs >= 1, "must be >= 1"),
        ("patience", c.patience >= 1, "must be >= 1"),
        ("max_drops", c.max_drops >= 0, "must be >= 0"),
        ("steps_per_epoch", c.steps_per_epoch is None or c.steps_per_epoch >= 1, "must be >= 1"),
        ("num_threads", c.num_threads >= 1, "must be >= 1"),
        ("seed", 0 <= c.seed < 2**63, "must be >= 0 and < 2**63 (torch.manual_seed)"),
        ("checkpoint_every", c.checkpoint_every is None or c.checkpoint_every >= 1, "must be >= 1 (steps)"),
        ("keep", c.keep >= 1, "must be >= 1"),
        (
            "lr_steps",
            steps is None
            or (len(steps) > 0 and all(b > a for a, b in zip([0, *steps[:-1]], steps, strict=True))),
            "must be increasing epochs >= 1, e.g. 30,60,80",
        ),
        (
            "lr_steps",
            c.schedule != "step" or steps is not None,
            "--schedule step needs --lr-steps, e.g. 30,60,80",
        ),
    ]
    return rules


def parse_lr_steps(value: object) -> list[int] | None:
    """ "30,60,80" or [30, 60, 80] -> [30, 60, 80]; ConfigError otherwise."""
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(items, list | tuple) or any(isinstance(v, bool | float) for v in items):
            raise ValueError
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{_name('lr_steps')} = {value!r}: not a list of epochs like 30,60,80") from None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def coerce(key: str, value: object) -> object:
    """A config-file value checked against the field's type (int for float is fine)."""
    if key == "lr_steps":
        return parse_lr_steps(value)
    annotation = next(f.type for f in fields(TrainConfig) if f.name == key)
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None and "None" in kinds:
        return None
    kind = _TYPES[kinds[0]]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{_name(key)} = {value!r}: must be {' or '.join(kinds)}")


MAX_CONFIG_BYTES = 2**20


def load_config_file(path: Path) -> dict:
    """JSON or TOML -> dict of TrainConfig fields; unknown keys and wrong types are an error."""
    if not path.is_file():  # a FIFO or /dev/zero would block or fill the memory
        raise ConfigError(f"{path}: a config file must be a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes, not a config file")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON or TOML config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a table of settings, not a {type(data).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}")
    try:
        return {k: coerce(k, v) for k, v in data.items()}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
