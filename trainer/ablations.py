"""Figure 1, settled: small CIFAR-10 nets trained for real under the caption's conditions, each
net's lr chosen by the caption's criterion, then several seeds per net.

Paper, Figure 1: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25%
training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons
(dashed line). The learning rates for each network were chosen independently to make training
as fast as possible. No regularization of any kind was employed."

The protocol (docs/figures.md):
1. Conditions: no weight decay, dropout, mirror, PCA lighting; a fixed lr (no schedule).
2. Nets: relu and tanh (the caption's pair), relu-lrn and tanh-lrn (the same with LRN, section
   3.3: Krizhevsky's own CIFAR-10 net of this shape had it), and relu-scale, the control: the
   ReLU net with LRN's constant gain 2^-0.75 and no normalisation (`--lrn scale`), so that what
   LRN does for ReLU can be split into its rescaling and its normalisation.
3. The lr of each net, chosen on its own: every lr of a grid stepping by at most sqrt(10) trains
   seed 0 for a budget of several epochs; the winner reaches 25 % training error soonest (ties,
   or none reached: the lowest error at the budget's end; `fig1_stats.sweep_rank`). Diverged
   and stuck-at-chance points are flagged and never win. A winner at an end of the grid extends
   the grid there, one step at a time (at most EXTEND times).
4. Each net at its lr for seeds 1..n (not seed 0, which chose the lr: its luck would bias the
   result), reported as mean and range over seeds (`fig1_stats`).

Every run is a normal `alextrain run` folder (OUT/NET/lrLR-seedS/), so a killed `fig1` resumes
where it stopped and a finished one only re-reads; ablation.json, fig1.md and fig1.png are
rewritten after each net's sweep and after each round of seeds, so a long run has numbers early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shards import layout
from trainer import checkpoint, fig1_report
from trainer import fig1_stats as stats
from trainer.config import TrainConfig, config_changes
from trainer.errors import TrainError
from trainer.guard import NonFiniteError
from trainer.metrics import METRICS, read_metrics
from trainer.runstate import dataset_change, trained_here
from trainer.train import check_out, resolve_data, run

# Figure 1's caption: no regularisation of any kind, a fixed lr (no schedule).
PAPER_CONDITIONS = dict(arch="cifar", weight_decay=0.0, mirror=False, lighting="off", max_drops=0)
NETS = {
    "relu": dict(activation="relu", lrn="off"),
    "tanh": dict(activation="tanh", lrn="off"),
    "relu-lrn": dict(activation="relu", lrn="cuda-convnet"),
    "tanh-lrn": dict(activation="tanh", lrn="cuda-convnet"),
    "relu-scale": dict(activation="relu", lrn="scale"),  # the control: LRN's gain, no normalising
    "tanh-scale": dict(activation="tanh", lrn="scale"),
}
EXTEND = 2  # grid steps added past an end where the winner lies
SWEEP_SEED = 0
DIVERGED = "DIVERGED.json"  # in a sweep point's folder: its loss became NaN, it is not trained again
# (fast net, slow net, key in ablation.json, the question the ratio answers)
PAIRS = (
    ("relu", "tanh", "tanh_over_relu", "Figure 1 as captioned (no LRN)"),
    ("relu-lrn", "tanh-lrn", "tanh_lrn_over_relu_lrn", "Figure 1 with LRN in both nets"),
    ("relu-lrn", "relu", "relu_over_relu_lrn", "what LRN gains the ReLU net"),
    ("relu-lrn", "relu-scale", "relu_scale_over_relu_lrn", "LRN's constant gain alone vs LRN"),
    ("relu-scale", "relu", "relu_over_relu_scale", "what LRN's constant gain alone gains the ReLU net"),
)
Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What `fig1` trains: the nets, the lr grid, the sweep's budget, the final runs' length
    and seed count, and the settings every run shares (crop, threads, init, a step cap)."""

    nets: tuple[str, ...] = stats.DEFAULT_NETS
    grid: tuple[float, ...] = stats.GRID
    budget: int = stats.BUDGET_EPOCHS  # epochs per sweep point
    epochs: int = stats.EPOCHS  # epochs per final run
    seeds: int = stats.SEEDS
    base: TrainConfig = field(default_factory=lambda: TrainConfig.of(crop=32))

    def check(self) -> None:
        unknown = [n for n in self.nets if n not in NETS]
        if unknown or not self.nets:
            raise ValueError(f"--nets: unknown or none {unknown}; choose from {', '.join(NETS)}")
        if len(set(self.nets)) != len(self.nets):
            raise ValueError(f"--nets: {', '.join(self.nets)} names a net twice")
        try:
            stats.check_grid(list(self.grid))
        except ValueError as e:
            raise ValueError(f"--lrs: {e}") from None
        if min(self.budget, self.epochs, self.seeds) < 1:
            raise ValueError("--sweep-epochs, --epochs and --seeds must each be >= 1")
        by_name: dict[str, float] = {}
        for lr in sorted(set(self.grid)):  # two lrs in one run folder: the second refused hours in
            first = by_name.setdefault(f"{lr:g}", lr)
            if first != lr:
                raise ValueError(f"--lrs: {first!r} and {lr!r} would share the run folder lr{lr:g}")

    @property
    def final_seeds(self) -> list[int]:
        return [SWEEP_SEED + 1 + k for k in range(self.seeds)]


def parse_list(text: str, flag: str, kind: type = str) -> tuple:
    """ "a,b" -> (a, b) for a comma-separated option; ValueError naming the flag."""
    try:
        items = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a comma-separated list of numbers") from None
    if not items:
        raise ValueError(f"{flag}: empty")
    return items


def run_dir(out: Path, net: str, lr: float, seed: int) -> Path:
    return out / net / f"lr{lr:g}-seed{seed}"


def _config(plan: Plan, data: Path, out: Path, net: str, lr: float, seed: int, epochs: int) -> TrainConfig:
    return plan.base.replace(
        data=str(data),
        out=str(run_dir(out, net, lr, seed)),
        lr=lr,
        seed=seed,
        epochs=epochs,
        **PAPER_CONDITIONS,
        **NETS[net],
    )


def _train(cfg: TrainConfig, label: str, say: Say, progress: bool) -> tuple[list[dict], int, bool]:
    """Train (or resume) one run to cfg.epochs; returns its rows, class count and whether it
    diverged. A finished run with the same settings is only read back; one made with other
    settings is refused.

    A run whose loss became non-finite (the trainer stops it, saving nothing of that step)
    ends there, marked by DIVERGED in its folder so a re-run does not train it again (it would
    replay the same steps to the same NaN): its rows are the epochs it finished. One seed that
    diverges does not stop the other nets and seeds of a run of many hours."""
    folder, epochs = Path(cfg.run.out), cfg.optim.epochs
    saved = folder / "config.json"
    resolved, fingerprint = resolve_data(cfg)  # what `run` compares: with the data's class count
    if saved.is_file():
        changes = config_changes(layout.read_json(saved), resolved)
        if changes:
            raise TrainError(f"{folder}: made with other settings: {'; '.join(changes)}; use another --out")
    elif (folder / METRICS).exists():  # read back, its curve would count under any settings
        raise TrainError(
            f"{folder}: has {METRICS} but no config.json, so its settings are unknown; remove it"
        )
    _refuse_other_data(folder, fingerprint, Path(resolved.run.data))
    done = len(read_metrics(folder / METRICS))
    if (folder / DIVERGED).is_file():
        say(f"fig1: {label}: diverged before, read back ({folder})")
    elif done < epochs:
        if not (folder / checkpoint.LAST).is_file() and trained_here(folder):
            # a record copied without its checkpoint (docs/fig1-settled/runs keeps none), or a
            # longer --epochs than it holds: nothing to resume, and a run is its seed's function
            say(f"fig1: {label}: {done} epochs recorded, no {checkpoint.LAST} to go on from: trained again")
            for old in (folder / METRICS, folder / checkpoint.BEST, *checkpoint.kept(folder)):
                old.unlink(missing_ok=True)
            done = 0
        say(f"fig1: {label}: epochs {done}-{epochs - 1} (numbered from 0) of {epochs} ({folder})")
        try:
            run(cfg, auto_resume=True, progress=progress)
        except NonFiniteError as e:
            say(f"fig1: {label}: DIVERGED: {e}")
            layout.write_json(folder / DIVERGED, {"error": str(e)})
    else:
        say(f"fig1: {label}: {epochs} epochs done, read back ({folder})")
        layout.remove_stale_tmp(folder)  # a checkpoint half-written when a finished run was killed
    rows, diverged = read_metrics(folder / METRICS)[:epochs], (folder / DIVERGED).is_file()
    if len(rows) < epochs and not diverged:  # never a short curve published as the run's
        raise TrainError(
            f"{folder / METRICS}: lists {len(rows)} of {epochs} epochs; remove {folder} to retrain it"
        )
    return rows, resolved.model.num_classes or 0, diverged


def _refuse_other_data(folder: Path, fingerprint: dict, data: Path) -> None:
    """A run trained on another dataset is not read back as this one's (its last.pt records
    the data's fingerprint, as `--resume` checks; a folder without one, such as the records in
    docs/fig1-settled/runs, is read back on its config.json alone)."""
    last = folder / checkpoint.LAST
    if last.is_file():
        why = dataset_change(checkpoint.load(last).get("dataset"), fingerprint, data)
        if why:
            raise TrainError(f"{folder}: trained on other data: {why}; use another --out")


def _curve(rows: list[dict], key: str = "train_top1_err") -> list[float]:
    return [r.get(key) for r in rows]


def sweep_point(plan: Plan, data: Path, out: Path, net: str, lr: float, say: Say, progress: bool) -> dict:
    cfg = _config(plan, data, out, net, lr, SWEEP_SEED, plan.budget)
    rows, classes, diverged = _train(cfg, f"{net}, sweep point lr {lr:g}, seed {SWEEP_SEED}", say, progress)
    curve, losses = _curve(rows), _curve(rows, "train_loss")  # the epochs it finished
    why = "diverged" if diverged else stats.flag(losses, curve, classes)
    if why:
        at = f"in epoch {len(curve) + 1}" if diverged else f"train err {curve[-1]:.3f}"
        say(f"fig1: {net}, sweep point lr {lr:g}: {why.upper()} ({at}): never chosen")
    return {
        "lr": lr,
        "train_error": curve,
        "epochs_to_25pct": stats.epochs_to(curve, stats.TARGET),
        "final_train_error": curve[-1] if curve else None,
        "flag": why,
    }


def sweep(plan: Plan, data: Path, out: Path, net: str, say: Say, progress: bool) -> dict:
    """One net's sweep: {"points": [... by lr], "chosen_lr": lr or None}."""
    points = {lr: sweep_point(plan, data, out, net, lr, say, progress) for lr in sorted(set(plan.grid))}
    for _ in range(EXTEND):
        best, lrs = stats.choose(list(points.values()), plan.budget), sorted(points)
        if best is None or lrs[0] < best < lrs[-1]:
            break
        lr = stats.beyond(lrs, up=best == lrs[-1])
        say(f"fig1: {net}: the best lr {best:g} is at the grid's end; adding {lr:g}")
        points[lr] = sweep_point(plan, data, out, net, lr, say, progress)
    rows = [points[lr] for lr in sorted(points)]
    chosen = stats.choose(rows, plan.budget)
    return {
        "points": rows,
        "chosen_lr": chosen,
        "decided_by": stats.decided_by(rows, plan.budget),
        # still at an end after EXTEND steps past it: the best lr may lie further out
        "at_grid_end": chosen is not None and len(rows) > 1 and chosen in (rows[0]["lr"], rows[-1]["lr"]),
    }


def final_run(
    plan: Plan, data: Path, out: Path, net: str, lr: float, seed: int, say: Say, progress: bool
) -> dict:
    cfg = _config(plan, data, out, net, lr, seed, plan.epochs)
    rows, _, diverged = _train(cfg, f"{net}, final lr {lr:g}, seed {seed}", say, progress)
    return {
        "seed": seed,
        "train_error": _curve(rows),
        "test_error": _curve(rows, "val_top1_err"),
        "diverged": diverged,  # then its curve ends at the last epoch it finished
    }


def net_result(lr: float, runs: list[dict], epochs: int) -> dict:
    """A net's final runs with their epochs to each level over seeds (a diverged seed counts as
    not getting there, unless it did before it diverged) and where its curve ends."""
    curves = [r["train_error"] for r in runs]
    whole = [r["train_error"] for r in runs if not r.get("diverged")]
    return {
        "lr": lr,
        "runs": runs,
        "diverged_seeds": [r["seed"] for r in runs if r.get("diverged")],
        "epochs_to": stats.epochs_to_levels(curves, epochs),
        "end_error": stats.end_error(whole),
    }


def ratios(nets: dict, epochs: int) -> dict:
    """Each pair of PAIRS whose two nets have final runs: the ratio at each of LEVELS and at the
    common level (`fig1_stats.common_level`), each with its range over seeds."""
    out = {}
    for fast, slow, key, question in PAIRS:
        f, s = nets.get(fast), nets.get(slow)
        if not (f and s and f["runs"] and s["runs"]):
            continue
        out[key] = {
            "fast": fast,
            "slow": slow,
            "question": question,
            "at": {lv: stats.ratio(s["epochs_to"][lv], f["epochs_to"][lv]) for lv in f["epochs_to"]},
            "common_level": stats.common_level(
                [r["train_error"] for r in f["runs"]], [r["train_error"] for r in s["runs"]], epochs
            ),
        }
    return out


def summarise(plan: Plan, swept: dict, chosen: dict, finals: dict, complete: bool) -> dict:
    nets = {n: net_result(chosen[n], finals[n], plan.epochs) for n in plan.nets if finals.get(n)}
    return {
        "conditions": {**PAPER_CONDITIONS, "init": plan.base.model.init},
        "protocol": {
            "criterion": "fewest epochs to 25 % training error within the budget; ties or none: "
            "the lowest training error at the budget's end",
            "target": stats.TARGET,
            "grid": sorted(plan.grid),
            "grid_max_step": stats.MAX_GRID_STEP,
            "budget_epochs": plan.budget,
            "sweep_seed": SWEEP_SEED,
            "seeds": plan.final_seeds,
            "epochs": plan.epochs,
            "steps_per_epoch": plan.base.run.steps_per_epoch,
            "nets": list(plan.nets),
            "levels": list(stats.LEVELS),
            "common_level": {"late": stats.LATE},
            "near_end": stats.NEAR_END,
            "end_epochs": stats.END_EPOCHS,
        },
        "sweep": swept,
        "chosen_lr": chosen,
        "nets": nets,
        "ratios": ratios(nets, plan.epochs),
        "paper_ratio_at_25pct": stats.PAPER_RATIO,
        "complete": complete,
    }


def publish(summary: dict, out: Path) -> None:
    """ablation.json, fig1.md and fig1.png, each written atomically."""
    layout.write_json(out / "ablation.json", summary)
    layout.write_atomic(out / "fig1.md", fig1_report.markdown(summary).encode())
    fig1_report.plot(summary, out / "fig1.png")


def _say_left_out(plan: Plan, out: Path, say: Say) -> None:
    """A call with fewer --nets than the summary in OUT rewrites it without them: said up front
    (their runs stay; naming them again publishes them again, read back)."""
    try:
        before = layout.read_json(out / "ablation.json")["protocol"]["nets"]
    except (KeyError, TypeError, layout.LayoutError):  # none yet, or not fig1's
        return
    gone = [n for n in before if n not in plan.nets] if isinstance(before, list) else []
    if gone:
        every = ",".join([*plan.nets, *gone])
        say(
            f"fig1: {out}: its summary had {', '.join(map(str, gone))} too; this one will not (their "
            f"runs stay: --nets {every} publishes them again)"
        )


def run_figure1(plan: Plan, data: Path, out: Path, say: Say = print, progress: bool = True) -> dict:
    """The sweep of every net, then seed rounds (seed 1 of every net, then seed 2, ...)."""
    plan.check()
    fig1_report.require_matplotlib()  # matplotlib missing: one line now, not after hours of training
    check_out(data, out)  # not among the shards: said before a folder is made there
    layout.ensure_dir(out)
    for name in ("ablation.json", "fig1.md", "fig1.png"):  # a folder there: said now, not hours in
        if (out / name).is_dir():
            raise TrainError(f"{out / name}: is a folder; fig1 writes its {name} there")
    layout.check_writable(out)
    _say_left_out(plan, out, say)
    one = len(set(plan.grid)) == 1  # one lr: no sweep, that lr for every net
    swept: dict[str, dict] = {}
    for n in [] if one else plan.nets:  # the summary after each net's sweep: hours in, numbers early
        swept[n] = sweep(plan, data, out, n, say, progress)
        publish(summarise(plan, swept, {k: v["chosen_lr"] for k, v in swept.items()}, {}, False), out)
    chosen = {n: plan.grid[0] if one else swept[n]["chosen_lr"] for n in plan.nets}
    for n in plan.nets:
        if chosen[n] is None:
            say(f"fig1: {n}: every sweep point diverged or stayed at chance; no final runs")
    finals: dict[str, list[dict]] = {n: [] for n in plan.nets}
    for seed in plan.final_seeds:
        for n in plan.nets:
            if chosen[n] is not None:
                finals[n].append(final_run(plan, data, out, n, chosen[n], seed, say, progress))
        complete = seed == plan.final_seeds[-1]
        publish(summarise(plan, swept, chosen, finals, complete=complete), out)
    return summarise(plan, swept, chosen, finals, complete=True)
