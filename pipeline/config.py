"""Settings as data: each field carries its default, choices, rule and help, written once.

A section of the configuration is a frozen dataclass whose fields are made with `setting()`.
From that one declaration come the `alextrain run` flags (trainer/options.py), the keys of a
TOML/JSON config file and of a run's config.json (trainer/config.py), and the checks: a value
is refused by `check_section` before any work, naming it as flag and key. A new setting is one
field here (or in a trainer section) plus the line that uses it.

`LoaderConfig` is the loader's section: what the train and eval loaders (and the DALI graphs
under them) are built from. It lives here, below the trainer, so the pipeline never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from preprocess.paper import LIGHTING_STD  # noqa: F401 (re-exported for the graphs)

LIGHTING_CONVENTIONS = ("cuda-convnet", "paper", "fbresnet", "off")
NORMALIZATIONS = ("mean-image", "channel")
BACKENDS = ("auto", "dali", "reference")
MAX_SHUFFLE_BUFFER = 65536  # larger: tens of GB of JPEGs held, and DALI's arithmetic overflows
MAX_PREFETCH = 32


class ConfigError(ValueError):
    """A setting that cannot work, named as flag and config key."""


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    name: str | None = None,
) -> Any:
    """A config field: its default, its help line, and what values it takes.

    `choices` or `check` + `rule` (the sentence a refusal prints) say what is allowed; `name`
    is the flag/key when it differs from the attribute (the loader's `backend` is `--loader`).
    """
    meta = {"help": help, "choices": choices, "check": check, "rule": rule, "name": name}
    return field(default=default, metadata=meta)


def key(f: Field) -> str:
    """The setting's name in flags (with - for _) and config files."""
    return f.metadata.get("name") or f.name


def flag_name(k: str) -> str:
    return f"--{k.replace('_', '-')} ({k})"


def default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def between(lo: float, hi: float, hi_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: finite(v) and lo <= v and (v < hi if hi_open else v <= hi)


def at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: v is None or v >= lo


def kinds(f: Field) -> list[str]:
    """The field's annotation as type names: "int | None" -> ["int", "None"]."""
    return [k.strip() for k in str(f.type).split("|")]


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def coerce(f: Field, value: object) -> object:
    """A config-file value checked against the field's type (an int for a float is fine)."""
    names = kinds(f)
    if value is None and "None" in names:
        return None
    if names[0].startswith("tuple"):
        return parse_ints(f, value)
    kind = _TYPES[names[0]]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{flag_name(key(f))} = {value!r}: must be {' or '.join(names)}")


def parse_ints(f: Field, value: object) -> tuple[int, ...] | None:
    """ "30,60,80" or [30, 60, 80] -> (30, 60, 80); ConfigError otherwise."""
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else value
    try:
        if not isinstance(items, list | tuple) or any(isinstance(v, bool | float) for v in items):
            raise ValueError
        return tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag_name(key(f))} = {value!r}: not a list of numbers like 30,60,80") from None


def check_section(section: object) -> None:
    """Each field's own rule (choices, range); the first broken one is refused by name."""
    for f in fields(section):
        value, meta = getattr(section, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{flag_name(key(f))} = {value!r}: not one of {allowed}")
        if meta.get("check") and not meta["check"](value):
            raise ConfigError(f"{flag_name(key(f))} = {value!r}: {meta['rule']}")


@dataclass(frozen=True)
class LoaderConfig:
    """How batches are made (section 4.1's augmentation and the readers under it)."""

    backend: str = setting(
        "auto",
        "dali (the pipeline, CPU or GPU), reference (webdataset + torch), auto: dali if installed.",
        choices=BACKENDS,
        name="loader",
    )
    num_threads: int = setting(
        4,
        "Loader threads (DALI CPU threads; the reference loader's DataLoader workers).",
        check=at_least(1),
        rule="must be >= 1",
    )
    lighting: str = setting(
        "cuda-convnet",
        "PCA lighting convention (section 4.1; pipeline/augment.py): cuda-convnet (Krizhevsky's code), "
        "paper (as printed, ~1,300 levels), fbresnet, or off.",
        choices=LIGHTING_CONVENTIONS,
    )
    lighting_scale_div: float = setting(
        1.0,
        "Divide the image by this after adding colour noise (cuda-convnet: 1.1; the paper: 1, "
        "not mentioned).",
        check=between(1.0, 2.0),
        rule="must be in [1, 2] (cuda-convnet: 1.1)",
    )
    mirror: bool = setting(True, "Random horizontal reflections in training (section 4.1).")
    normalization: str = setting(
        "mean-image",
        "mean-image: subtract the training set's mean image (section 2); "
        "channel: per-channel mean and std (torchvision style).",
        choices=NORMALIZATIONS,
    )
    shuffle_buffer: int = setting(
        4096,
        "Samples in the reader's shuffle buffer (DALI initial_fill; the shard order is also permuted "
        "every epoch and the training split was shuffled when written).",
        check=between(1, MAX_SHUFFLE_BUFFER),
        rule=f"must be in [1, {MAX_SHUFFLE_BUFFER}] (held in memory as encoded images: "
        f"{MAX_SHUFFLE_BUFFER:,} ImageNet JPEGs at 256 px are ~7 GB)",
    )
    prefetch: int = setting(
        2,
        "Batches DALI prepares ahead.",
        check=between(1, MAX_PREFETCH),
        rule=f"must be in [1, {MAX_PREFETCH}] (each is a whole batch in memory)",
    )
    hw_decoder_load: float = setting(
        0.65,
        "Share of JPEGs sent to the A100/H100 hardware decoder (GPU loader only).",
        check=between(0.0, 1.0),
        rule="must be in [0, 1]",
    )
    mmap: bool = setting(
        True,
        "Memory-map the shards (fast on local disks); --no-mmap reads them with plain reads, for "
        "NFS/Lustre and for shards that may change while a run reads them.",
    )

    def check(self) -> None:
        check_section(self)
        if self.lighting == "off" and self.lighting_scale_div != 1.0:
            raise ConfigError(
                f"{flag_name('lighting_scale_div')} = {self.lighting_scale_div:g} divides after the "
                f"colour noise, but {flag_name('lighting')} = 'off' adds none; leave one of them out"
            )

    def resolved_backend(self) -> str:
        """The loader that runs: auto is DALI where it is installed, else the reference loader.
        A checkpoint records it, so that a resume on a host without DALI is not silently
        another loader (another data stream) under the same `auto`."""
        if self.backend != "auto":
            return self.backend
        import importlib.util

        try:
            found = importlib.util.find_spec("nvidia.dali") is not None
        except ModuleNotFoundError:  # no `nvidia` package at all
            found = False
        return "dali" if found else "reference"

    def eval(self) -> LoaderConfig:
        """The same loader for evaluation: no lighting noise, so no divide after it."""
        from dataclasses import replace

        return replace(self, lighting="off", lighting_scale_div=1.0)
