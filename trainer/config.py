"""Everything a run is configured by: one nested, frozen config, the paper's values as defaults.

    TrainConfig
      model   ModelConfig    the network (section 3) and its input size
      loader  LoaderConfig   augmentation and readers (section 4.1; pipeline/config.py)
      optim   OptimConfig    SGD, batch, schedule (section 5)
      run     RunConfig      data, output folder, checkpoints, devices, precision

(model, optim and run are declared in trainer/sections.py.) Each field is declared once with
`setting()` (default, choices or rule, help); the `alextrain run` flags (trainer/options.py),
config files (TOML tables or JSON, nested by section, or flat keys) and a run's config.json all
come from it. Every key is unique across sections, so a flat key such as `lr` names one field.
`TrainConfig.check()` applies every rule, combinations included, before any work; the checks
that need the dataset (class count, stored size) or the process count (global batch) are in
trainer/train.py and trainer/distributed.py. Passed whole.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, LoaderConfig, check_section, coerce, default, flag_name, key
from trainer.sections import ModelConfig, OptimConfig, RunConfig

__all__ = ["ConfigError", "LoaderConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig"]


SECTIONS = {"model": ModelConfig, "loader": LoaderConfig, "optim": OptimConfig, "run": RunConfig}
# flat key -> (section, attribute); keys are unique across sections
WHERE: dict[str, tuple[str, str]] = {key(f): (s, f.name) for s, cls in SECTIONS.items() for f in fields(cls)}
FIELDS = {key(f): f for cls in SECTIONS.values() for f in fields(cls)}
# per host (not compared across ranks): its disk, its loader threads (the batches do not depend on
# them: tests/test_resume.py). A resumed run may change those and the rest of RESUMABLE, no other.
PER_HOST = frozenset({"data", "out", "mmap", "num_threads"})
RESUMABLE = PER_HOST | {"epochs", "checkpoint_every", "keep", "verify_data"}
PATHS = frozenset({"data", "out", "init_from"})
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


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- as data: nested for files, flat for flags and messages ----
    def to_dict(self) -> dict:
        """Nested by section, keys as in flags and config files (JSON- and TOML-ready)."""
        return {
            s: {key(f): _plain(getattr(getattr(self, s), f.name)) for f in fields(cls)}
            for s, cls in SECTIONS.items()
        }

    def flat(self) -> dict[str, Any]:
        return {k: getattr(getattr(self, s), a) for k, (s, a) in WHERE.items()}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        return cls().replace(**values)

    @classmethod
    def of(cls, **values: Any) -> TrainConfig:
        """`TrainConfig.of(arch="cifar", lr=0.1)`: the defaults with these settings (flat keys)."""
        return cls().replace(**values)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """Nested ({"optim": {"lr": ...}}) or flat ({"lr": ...}) settings, types checked."""
        return cls.from_flat(flatten(data, source))

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with some settings changed, by flat key: `cfg.replace(lr=0.1, crop=227)`."""
        unknown = sorted(set(values) - set(WHERE))
        if unknown:
            raise ConfigError(f"unknown settings {unknown}")
        by_section: dict[str, dict] = {}
        for k, v in user_paths(values).items():
            s, a = WHERE[k]
            by_section.setdefault(s, {})[a] = tuple(v) if isinstance(v, list) else v
        return replace(self, **{s: replace(getattr(self, s), **kv) for s, kv in by_section.items()})

    # ---- the rules, all of them, before any work ----
    def check(self, given: set[str] | None = None) -> None:
        """Refuse the first bad setting (ConfigError naming flag and key); `given`: keys the user
        set. An option the arch or schedule ignores is refused when given (or, for a
        programmatic config, when it differs from its default) rather than silently dropped."""
        for section in (self.model, self.loader, self.optim, self.run):
            check_section(section)
        self.loader.check()
        m, o, r = self.model, self.optim, self.run
        rules = [
            (
                "crop",
                m.crop is None or (m.crop in (224, 227) if m.arch == "alexnet" else m.crop >= 16),
                "alexnet takes 224 or 227" if m.arch == "alexnet" else "cifar takes 16 up to the stored size",
            ),
            (
                "init",
                m.init == "paper" or m.arch == "cifar",
                "cuda-convnet is the cifar net's (layers-18pct)",
            ),
            (
                "model_parallel",
                r.model_parallel == 1 or (m.arch == "alexnet" and m.towers == 2),
                "--model-parallel 2 puts one tower per GPU: it needs the two-tower alexnet",
            ),
            (
                "lr_steps",
                o.lr_steps is None
                or (
                    len(o.lr_steps) > 0
                    and all(b > a for a, b in zip((0, *o.lr_steps[:-1]), o.lr_steps, strict=True))
                ),
                "must be increasing epochs >= 1, e.g. 30,60,80",
            ),
            ("lr_steps", o.schedule != "step" or o.lr_steps is not None, "--schedule step needs --lr-steps"),
            ("warmup_epochs", o.warmup_epochs < o.epochs, "must be fewer than --epochs"),
            ("warmup_epochs", o.warmup_epochs == 0 or o.base_lr() > o.lr, WARMUP_RULE.format(o=o)),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ConfigError(f"{flag_name(name)} = {self.flat()[name]!r}: {rule}")
        flat = self.flat()
        for name, why in {**ARCH_IGNORES.get(m.arch, {}), **SCHEDULE_IGNORES.get(o.schedule, {})}.items():
            if (given is not None and name in given) or flat[name] != default(FIELDS[name]):
                raise ConfigError(f"{flag_name(name)}: {why}; leave it out")


WARMUP_RULE = (
    "ramps from --lr up to the linearly scaled lr (Goyal et al.), so it needs --lr-scaling linear and "
    "a --global-batch above 128 (here: lr_scaling {o.lr_scaling!r}, global batch {o.global_batch})"
)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def flatten(data: dict, source: str = "config") -> dict[str, Any]:
    """Nested sections and/or flat keys -> flat keys, each type-checked; unknown keys refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config holds a table of settings, not a {type(data).__name__}")
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if k in SECTIONS and isinstance(v, dict):
            inner = {key(f): f.name for f in fields(SECTIONS[k])}
            wrong = sorted(set(v) - set(inner))
            elsewhere = [f"{w!r} belongs in [{WHERE[w][0]}]" for w in wrong if w in WHERE]
            if elsewhere:
                raise ConfigError(f"{source}: in [{k}], {', '.join(elsewhere)}")
            if wrong:
                raise ConfigError(f"{source}: unknown keys {wrong} in [{k}]")
            flat.update(v)
        elif k in WHERE:
            flat[k] = v
        else:
            raise ConfigError(f"{source}: unknown key {k!r}")
    try:
        return {k: coerce(FIELDS[k], v) for k, v in flat.items()}
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


MAX_CONFIG_BYTES = 2**20


def load_config_file(path: Path) -> dict[str, Any]:
    """JSON or TOML (nested by section, or flat keys) -> flat settings; errors name the file."""
    if not path.is_file():  # a FIFO or /dev/zero would block or fill the memory
        raise ConfigError(f"{path}: a config file must be a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES:,} bytes, not a config file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not a key
        data = _parse(text, path.suffix.lower())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable JSON or TOML config ({e})") from None
    return user_paths(flatten(data, str(path)))


def _parse(text: str, suffix: str) -> Any:
    """By the suffix (.toml: TOML, .json: JSON, either case); another suffix, or none: JSON if
    it opens as JSON does, else TOML."""
    if suffix in (".toml", ".json"):
        return tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    if text.lstrip().startswith(("{", "[")):  # JSON's error, not TOML's, for a broken JSON file
        return json.loads(text)
    return tomllib.loads(text)


def config_changes(saved: dict, now: TrainConfig, ran: str | None = None) -> list[str]:
    """Settings that differ between a checkpoint's config and this run's, except RESUMABLE ones.

    `ran`: the loader a run saved with `--loader auto` resolved to (its checkpoint's "backend"):
    naming exactly that one is no change; "*" leaves the question to the checkpoint's check.

    A setting the saved config does not have (added to the code after that run was saved) is
    taken at its default: a new setting's default is the behaviour from before it existed. So a
    run of many sessions (Figure 1's) is still resumed and read back across such a change,
    while choosing anything else for that setting is still a change."""
    then = flatten(saved, "checkpoint config")
    mine = now.flat()
    then = {**{k: default(FIELDS[k]) for k in set(mine) - set(then)}, **then}
    if then.get("loader") == "auto" and ran in ("*", mine["loader"]):
        then["loader"] = mine["loader"]
    keys = sorted((set(then) | set(mine)) - RESUMABLE)
    return [
        f"{k} (checkpoint {then.get(k)!r}, now {mine.get(k)!r})" for k in keys if then.get(k) != mine.get(k)
    ]


def user_paths(values: dict[str, Any]) -> dict[str, Any]:
    """`~` expanded in the PATHS settings: a config file or `--out=~/x` has no shell to do it."""
    return {k: os.path.expanduser(v) if k in PATHS and isinstance(v, str) else v for k, v in values.items()}
