"""`alextrain run`, `fig1` and `demo`: the commands that train."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pipeline.config import flag_name
from preprocess.cli import UserPath, on_interrupt  # on_interrupt: one Ctrl-C mechanism for both CLIs
from trainer import fig1_stats  # torch-free: fig1's defaults
from trainer.cli_common import (
    USER_ERRORS,
    fail,
)
from trainer.config import TrainConfig, config_changes, load_config_file, user_paths
from trainer.errors import TrainError
from trainer.options import option, run_options


@click.command("run")
@run_options
@click.option(
    "--config",
    "config_file",
    type=UserPath(exists=True, dir_okay=False, path_type=Path),
    help="JSON or TOML file of the same settings; flags override it.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last checkpoint; settings not given come from its "
    "config.json (a different one is refused, except --epochs, --data and a few others).",
)
@click.option(
    "--auto-resume",
    is_flag=True,
    help="Resume if --out has a checkpoint, else start (for restart policies and schedulers).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_cmd(config_file: Path | None, resume: bool, auto_resume: bool, quiet: bool, **flags) -> None:
    """Train AlexNet with the paper's recipe (all values overridable)."""
    from trainer.train import run

    values: dict = {}
    from_file: set[str] = set()
    flags = user_paths(flags)  # before --resume looks for --out=~/r's config.json
    on_interrupt(lambda: _interrupted(flags.get("out") or values.get("out")))
    try:
        values = load_config_file(config_file) if config_file else {}
        from_file = {k for k in values if flags.get(k) is None}
        # only flags count as given: a config file (a run's config.json) may hold every key, the
        # defaults of options its arch lacks too, and is refused only where a value would matter
        given = {k for k, v in flags.items() if v is not None}
        values.update({k: flags[k] for k in given})
        if resume or auto_resume:  # what the user leaves out is what the run was started with
            from trainer.hosts import run_settings  # rank 0's, on hosts that do not share --out

            saved = run_settings(values.get("out"), _saved_settings if resume else _resumable_settings)
            if resume and not saved and values.get("out") and not values.get("data"):
                raise TrainError(_no_settings(Path(values["out"])))
            _refuse_lost_data(saved, values)
            values = {**saved, **values}
            if saved:  # before a hash pass of the shards (an hour on ImageNet) is spent
                _refuse_changed(saved, values, "--resume" if resume else "--auto-resume")
        cfg = TrainConfig.from_flat(values)
        if not cfg.run.data or not cfg.run.out:
            raise TrainError("--data and --out are required (flags or config file)")
        rows = run(cfg, resume=resume, progress=not quiet, auto_resume=auto_resume, given=given)
    except USER_ERRORS as e:
        fail(str(e) + _from_file(str(e), from_file, config_file))
    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 speaks for the run
    if rows:
        last = rows[-1]
        click.echo(
            f"done: epoch {last['epoch']}, train loss {last['train_loss']:.4f}"
            + (f", val top-1 err {last['val_top1_err']:.4f}" if "val_top1_err" in last else "")
            + f"; checkpoint {Path(cfg.run.out) / 'last.pt'}"
        )
    else:
        click.echo(f"nothing to do: {_finished(Path(cfg.run.out), cfg.optim.epochs)}")


def _from_file(message: str, from_file: set[str], config_file: Path | None) -> str:
    """Where a refused setting came from when it was --config's and no flag's: "leave it out"
    then means out of that file (a flag cannot unset what a file sets)."""
    named = any(message.startswith(flag_name(k)) for k in from_file)
    return f" (set in {config_file})" if named else ""


def _refuse_changed(saved: dict, values: dict, flag: str) -> None:
    """--resume with a given setting that differs from the run's: refused naming it, before the
    merged settings are checked, which would blame one the user did not give (`--arch alexnet`
    on a cifar run: "crop 32: alexnet takes 224"). `values` is `saved` with the given flags over
    it, so what differs is what was given. The run's start refuses the rest (its data, its
    process count) on every rank; this check is the same on every rank (rank 0's settings)."""
    changed = config_changes(TrainConfig.from_flat(saved).to_dict(), TrainConfig.from_flat(values), ran="*")
    if changed:
        raise TrainError(f"{flag} with other settings than the run's: {'; '.join(changed)}")


def _finished(out: Path, epochs: int) -> str:
    """What a run that had nothing left to do has done: all its epochs, or more than --epochs
    asks for (a lower --epochs on --resume trains nothing and changes nothing)."""
    from trainer.metrics import METRICS, read_metrics

    done = len(read_metrics(out / METRICS))
    if done <= epochs:
        return f"{out} has finished its {epochs} epochs"
    return f"{out} has trained {done} epochs; --epochs {epochs} asks for none more"


def _interrupted(out: str | Path | None) -> str | None:
    """Ctrl-C's line (said by the CLI group, exit 130): where the run can go on from, as of the
    Ctrl-C (checkpoints are written atomically, so the last is whole). Rank 0 speaks: None elsewhere."""
    if os.environ.get("RANK", "0") != "0":
        return None
    last = Path(out or ".") / "last.pt"
    if last.is_file():
        return f"go on from {last} with `alextrain run --out {out} --resume`"
    return "no checkpoint was written yet: start it again"


def _no_settings(out: Path) -> str:
    """Why --resume alone cannot go on in `out`: no run there, or a checkpoint whose config.json
    (the settings not given) is gone."""
    if (out / "last.pt").is_file():
        return (
            f"{out / 'config.json'}: missing, so the run's settings are unknown; give them as flags "
            "(--data and any the run was started with) with --resume"
        )
    return f"--resume: no such checkpoint: no run was started in {out}"


def _refuse_lost_data(saved: dict, values: dict) -> None:
    """The run's --data (from its config.json; under torchrun, rank 0's) is not here: the shards
    moved, this host mounts them elsewhere, or a run from before --data was recorded absolute
    is resumed from another folder. Said so, rather than "no such folder" alone."""
    data = saved.get("data")
    if not data or values.get("data") or Path(data).exists():
        return
    where = (
        "recorded relative to the folder the run was started in"
        if not Path(data).is_absolute()
        else "from the run's config.json (under torchrun, rank 0's)"
    )
    raise TrainError(f"the run's --data {data} ({where}) is not found here: pass --data")


def _saved_settings(out: str | None) -> dict:
    """The settings of the run to resume: OUT/config.json's, else (that file lost) the same
    settings as its last.pt records them; {} when there is no run yet."""
    saved = Path(out) / "config.json" if out else None
    if saved is None:
        return {}
    if saved.is_file():
        return {k: v for k, v in load_config_file(saved).items() if k != "out"}
    last = saved.parent / "last.pt"
    if not last.is_file():
        return {}
    from trainer import checkpoint
    from trainer.config import flatten

    config = checkpoint.load(last).get("config")
    return {k: v for k, v in flatten(config, f"{last}'s config").items() if k != "out"} if config else {}


def _resumable_settings(out: str | None) -> dict:
    """--auto-resume's: the run's settings where it will resume (OUT/last.pt is there), else {}
    (it starts anew with the settings given, as a restart before the first checkpoint should)."""
    return _saved_settings(out) if out and (Path(out) / "last.pt").is_file() else {}


@click.command("fig1")
@click.option("--data", required=True, type=UserPath(path_type=Path), help="CIFAR-10 shards (--size 32).")
@click.option(
    "--out",
    required=True,
    type=UserPath(path_type=Path),
    help="Folder for the runs, JSON, Markdown and PNG.",
)
@click.option(
    "--nets",
    default=",".join(fig1_stats.DEFAULT_NETS),
    show_default=True,
    help="Comma-separated: relu, tanh (Figure 1); relu-lrn, tanh-lrn (with LRN); relu-scale, "
    "tanh-scale (LRN's constant gain alone: the control).",
)
@click.option(
    "--lrs",
    default=",".join(f"{lr:g}" for lr in fig1_stats.GRID),
    show_default=True,
    help="The lr grid each net is swept on (steps of at most sqrt(10); extended past an end that "
    "wins); one value: no sweep.",
)
@click.option(
    "--sweep-epochs",
    type=click.IntRange(1),
    default=fig1_stats.BUDGET_EPOCHS,
    show_default=True,
    help="Budget per sweep point: the lr that reaches 25% training error soonest within it wins "
    "(none or a tie: the lowest error at its end).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=fig1_stats.EPOCHS,
    show_default=True,
    help="Epochs per final run.",
)
@click.option(
    "--seeds",
    type=click.IntRange(1),
    default=fig1_stats.SEEDS,
    show_default=True,
    help="Final runs per net (seeds 1..N).",
)
@option("crop", none_default=True)
@option("steps_per_epoch", none_default=True)
@option("num_threads", none_default=True)
@option("init", none_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars (each run is still named).")
def fig1_cmd(
    data: Path,
    out: Path,
    nets: str,
    lrs: str,
    sweep_epochs: int,
    epochs: int,
    seeds: int,
    crop: int | None,
    steps_per_epoch: int | None,
    num_threads: int | None,
    init: str | None,
    quiet: bool,
) -> None:
    """Figure 1, settled (docs/figures.md): each net's lr swept by the caption's criterion, then
    several seeds per net; epochs to 25% training error with ranges, ratios, curves with bands."""
    from trainer.ablations import Plan, parse_list, run_figure1
    from trainer.fig1_report import lines

    on_interrupt(
        "finished runs are kept and the one in flight goes on from its last checkpoint: "
        "re-run the same command"
    )
    try:
        shared = dict(crop=crop, steps_per_epoch=steps_per_epoch, num_threads=num_threads, init=init)
        base = TrainConfig.of(**{k: v for k, v in shared.items() if v is not None})
        plan = Plan(
            parse_list(nets, "--nets"), parse_list(lrs, "--lrs", float), sweep_epochs, epochs, seeds, base
        )
        summary = run_figure1(plan, data, out, say=click.echo, progress=not quiet)
    except USER_ERRORS as e:
        fail(str(e))
    for line in lines(summary):
        click.echo(line)
    click.echo(f"wrote {out / 'ablation.json'}, {out / 'fig1.md'} and {out / 'fig1.png'}")


@click.command("demo")
@click.argument("out", type=UserPath(file_okay=False, path_type=Path))
def demo_cmd(out: Path) -> None:
    """The whole chain on a small image set it draws: shard, verify, pca-stats, run, eval,
    Figures 3 and 4, report (a few minutes on 2 CPU cores; OUT/run holds the results).
    Re-run on the same OUT after a stop: what is complete is reused."""
    from trainer.demo import run_demo

    on_interrupt(f"what is complete is kept: re-run `alextrain demo {out}` to go on")
    try:
        run_demo(out, click.get_current_context().find_root().command, echo=click.echo)
    except USER_ERRORS as e:
        fail(str(e))
