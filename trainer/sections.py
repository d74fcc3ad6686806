"""The sections of a run's configuration other than the loader's (pipeline/config.py): the
network, SGD and its schedule, and the run itself. Each field is declared once with `setting()`
(default, choices or rule, help); trainer/config.py joins the four into TrainConfig, and the
flags, config files and config.json all come from these declarations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pipeline.config import ConfigError, at_least, between, check_section, coerce, finite, setting
from preprocess import paper

MAX_LR = 10.0  # far above any rate that trains; above it the first step diverges
CIFAR_SIZE = 32  # the cifar net's input when no dataset has said otherwise


@dataclass(frozen=True)
class ModelConfig:
    """The network (section 3). Saved in every checkpoint: it is what rebuilds the model."""

    arch: str = setting(
        "alexnet",
        "alexnet: the paper's net (section 3); cifar: Figure 1's four-layer net for 32x32 images.",
        choices=("alexnet", "cifar"),
    )
    num_classes: int | None = setting(
        None,
        "Must match the dataset [default: from its classes.json].",
        check=lambda v: v is None or v >= 2,
        rule="must be >= 2 (or left out: from the dataset)",
    )
    activation: str = setting(
        "relu", "relu (section 3.1) or tanh (Figure 1's comparison).", choices=("relu", "tanh")
    )
    lrn: str = setting(
        "cuda-convnet",
        "cuda-convnet: torch LRN alpha=1e-4 (Krizhevsky's code); paper: the printed formula (5x); off; "
        "scale: LRN's constant part alone, x 2^-0.75 (Figure 1's control, docs/model.md).",
        choices=("cuda-convnet", "paper", "off", "scale"),
    )
    pool: str = setting(
        "overlap",
        "overlap: 3x3 windows, stride 2 (section 3.4); nonoverlap: 2x2, stride 2.",
        choices=("overlap", "nonoverlap"),
    )
    towers: int = setting(
        2,
        "2: the paper's net; 1: one GPU with half the kernels (section 3.2). alexnet only.",
        choices=(1, 2),
    )
    extra_conv: bool = setting(False, "A sixth conv layer (Table 2's 1 CNN*). alexnet only.")
    dropout: float = setting(
        paper.DROPOUT,
        "Dropout probability of fc6 and fc7 (section 4.2). alexnet only.",
        check=between(0.0, 1.0, hi_open=True),
        rule="must be in [0, 1)",
    )
    dropout_mode: str = setting(
        "paper",
        "paper: kept units unscaled in training, x0.5 at test (section 4.2); "
        "inverted: torch's nn.Dropout (x2 in training).",
        choices=("paper", "inverted"),
    )
    init: str = setting(
        "paper",
        "paper: weights N(0, 0.01^2) (section 5); cuda-convnet: conv1 at 1e-4, the rest 0.01 "
        "(layers-18pct, Krizhevsky's CIFAR-10 net). cifar only.",
        choices=("paper", "cuda-convnet"),
    )
    crop: int | None = setting(
        None,
        "Input size: alexnet 224 (conv1 padded by 2) or 227 (Caffe) [default: 224; cifar: the stored size].",
        check=lambda v: v is None or 1 <= v <= 4096,
        rule="must be in 1..4096",
    )

    @property
    def input_size(self) -> int:
        """The crop, resolved: the dataset fills it in for cifar; alone, CIFAR's 32."""
        return self.crop or (paper.CROP_SIZE if self.arch == "alexnet" else CIFAR_SIZE)

    @property
    def conv1_padding(self) -> int:
        """Errata (docs/model.md): 224 crops need conv1 padded by 2 for 55x55 maps; 227 none."""
        return 2 if self.arch == "alexnet" and self.input_size == 224 else 0

    @property
    def classes(self) -> int:
        return self.num_classes or 1000

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> ModelConfig:
        """A checkpoint's model config, checked: a damaged one is not read as the default net."""
        missing = [k for k in ("arch", "num_classes") if k not in saved]
        if missing:
            raise ConfigError(f"no {' or '.join(missing)}")
        unknown = sorted(set(saved) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown keys {unknown} (a checkpoint from before 0.2?)")
        made = cls(**{f.name: coerce(f, saved[f.name]) for f in fields(cls) if f.name in saved})
        check_section(made)
        return made


@dataclass(frozen=True)
class OptimConfig:
    """SGD and the learning-rate schedule (section 5)."""

    global_batch: int = setting(
        paper.BATCH_SIZE,
        "Images per step across all processes (section 5: 128); each process takes an equal share. "
        "Larger is a departure: see --lr-scaling and --warmup-epochs (docs/runbook.md).",
        check=at_least(1),
        rule="must be >= 1",
    )
    lr: float = setting(
        paper.LEARNING_RATE,
        "Learning rate (section 5: 0.01), at the paper's batch of 128 (see --lr-scaling).",
        check=lambda v: finite(v) and 0 < v <= MAX_LR,
        rule=f"must be a finite number in (0, {MAX_LR:g}]",
    )
    lr_scaling: str = setting(
        "none",
        "none: --lr as given; linear: --lr x global batch / 128 (Goyal et al. 2017), for large batches.",
        choices=("none", "linear"),
    )
    warmup_epochs: int = setting(
        0,
        "Ramp the lr linearly from --lr to its scaled value over this many epochs, per step "
        "(Goyal et al.: 5 with --lr-scaling linear) [default: 0, the paper].",
        check=at_least(0),
        rule="must be >= 0",
    )
    momentum: float = setting(
        paper.MOMENTUM, "SGD momentum (section 5).", check=between(0.0, 1.0, True), rule="must be in [0, 1)"
    )
    weight_decay: float = setting(
        paper.WEIGHT_DECAY,
        "L2 weight decay (section 5).",
        check=between(0.0, 1.0, True),
        rule="must be in [0, 1)",
    )
    decay_biases: bool = setting(
        False, "Also apply weight decay to biases (the paper's update decays weights only)."
    )
    epochs: int = setting(
        paper.EPOCHS,
        "Epochs in all (section 5: roughly 90); raise it to extend a run with --resume.",
        check=at_least(1),
        rule="must be >= 1",
    )
    schedule: str = setting(
        "plateau",
        "plateau: lr/10 when val error stalls (the paper; needs a val split); step: at --lr-steps.",
        choices=("plateau", "step"),
    )
    lr_steps: tuple[int, ...] | None = setting(
        None, "Epochs at which --schedule step divides the lr by 10, e.g. 30,60,80."
    )
    patience: int = setting(
        3,
        "Epochs without val improvement before the lr is divided by 10 (plateau).",
        check=at_least(1),
        rule="must be >= 1",
    )
    max_drops: int = setting(
        paper.MAX_DROPS, "Most lr divisions (plateau; section 5: 3).", check=at_least(0), rule="must be >= 0"
    )

    def base_lr(self) -> float:
        """The lr after warm-up: --lr, times global batch / 128 with --lr-scaling linear."""
        return self.lr * (self.global_batch / paper.BATCH_SIZE if self.lr_scaling == "linear" else 1.0)


@dataclass(frozen=True)
class RunConfig:
    """What to train on, where to write, and on what hardware."""

    data: str = setting("", "Sharded dataset folder (alexprep shard, then alexprep pca-stats). Required.")
    out: str = setting("", "Run directory: checkpoints, metrics.jsonl, config.json. Required.")
    train_split: str = setting("train", "Split to train on.")
    val_split: str | None = setting(None, "[default: val, validation or test, whichever exists].")
    seed: int = setting(
        0,
        "Seeds the init, the data order and every random augmentation (resume is exact).",
        check=lambda v: 0 <= v < 2**63,
        rule="must be >= 0 and < 2**63 (torch.manual_seed)",
    )
    steps_per_epoch: int | None = setting(
        None,
        "Cap on steps per epoch (quick runs) [default: the whole split].",
        check=at_least(1),
        rule="must be >= 1",
    )
    checkpoint_every: int | None = setting(
        None,
        "Also checkpoint every N steps (exact mid-epoch resume) [default: epoch ends only].",
        check=at_least(1),
        rule="must be >= 1 (steps)",
    )
    keep: int = setting(
        1,
        "Keep the newest N checkpoints as step-*.pt (last.pt is the newest; best.pt is kept too).",
        check=at_least(1),
        rule="must be >= 1",
    )
    verify_data: str = setting(
        "quick",
        "Check the shards before training: quick (structure; hashes if never verified) or full.",
        choices=("quick", "full"),
    )
    device: str = setting(
        "auto",
        "auto: CUDA when a GPU is visible, else the CPU; cuda: refuse to start without a GPU.",
        choices=("auto", "cuda", "cpu"),
    )
    model_parallel: int = setting(
        1, "2: one tower per GPU, as in the paper (needs --towers 2).", choices=(1, 2)
    )
    precision: str = setting(
        "fp32",
        "fp32: the paper's arithmetic (TF32 off); tf32: TF32 matmuls/convolutions on Ampere+; "
        "bf16: bf16 autocast (LRN kept in fp32). A speed choice, recorded and fixed for a run.",
        choices=("fp32", "tf32", "bf16"),
    )
    channels_last: bool = setting(
        True,
        "NHWC memory layout: faster convolutions on CUDA, and on the CPU for the CIFAR net "
        "(+20 %; AlexNet's CPU step is unchanged). Same arithmetic up to float rounding.",
    )
    compile: bool = setting(
        False, "torch.compile the model (same outputs and gradients as eager; slower start)."
    )
    init_from: str | None = setting(
        None,
        "Fine-tune: start from this run folder's / checkpoint's weights (new classifier if the "
        "class count differs; new optimiser state). Table 2's 1 CNN*: pre-train with --extra-conv too.",
    )
