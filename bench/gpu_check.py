"""Every GPU check in one run, one table: see bench/gpu_check.sh (the entry point).

    python bench/gpu_check.py --data .gpu/data/imagenet --out OUT [--device cuda|cpu]

First one line: every module the checks need imports (else one line naming what does not, and
exit 2, before any work). Then, from the carried shards, a bench set at the same size: the
training images `--copies` times over in shards of 32 (1,000 images x 16 = 500 shards,
ImageNet's count; an epoch of 62 batches of 256, longer than a pipeline's start, so the next
epoch's can be ready at the boundary as in a real run), made on the machine in seconds.

Rows (each check runs on its own; one that fails prints its error in its row, the others run):

- decode: the training graph's own read + random-crop decode (`dali.crop_decode_pipeline`,
  `image_crop`) with the hardware decoder's share at 0, 0.65 (the default) and 1;
- loader: a pipeline's start (build, shuffle-buffer fill, first batch) in its own row; the
  training loader's img/s inside one epoch (nothing built in the timed window); the epoch
  boundary gap with the next epoch started ahead (and without, the old way), in steady batches;
  the eval pass start on the kept pipeline;
- training as `alextrain run --precision bf16` runs it (`trainer.distributed.setup`:
  cudnn.benchmark, the precision's flags; channels_last and bf16 autocast from the run's
  config; the run's default precision is fp32): synthetic vs DALI input, the same warm-up and timed
  steps inside one epoch (`trainer.bench.train_rate`), and their ratio (target >= 95 %);
  fp32 vs bf16 step time; the two-tower (`--model-parallel 2`) code path on one device;
- `trainer.model.lrn_bf16_agreement`: LRN under bf16 autocast vs fp32;
- `alextrain run` killed mid-epoch (SIGKILL at a step: `trainer.faults`, the trainer's own
  hook) after a checkpoint, resumed with --resume to the end, then `alextrain eval` of last.pt.

--device cpu runs the same logic at toy sizes (cifar net, batch 4, a few steps): a dry run that
tests/test_gpu_check.py runs, so the script cannot rot; hardware decoding is n/a there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import absolute, folder, last_line, positive, refused  # noqa: E402 - the standard library only

# everything the checks import, checked before any work (third-party, then the project's)
MODULES = [
    "torch",
    "numpy",
    "cv2",
    "pyarrow",
    "click",
    "tqdm",
    "PIL",
    "webdataset",
    "nvidia.dali",
    "pipeline.ahead",
    "pipeline.bench",
    "pipeline.dali",
    "pipeline.loader",
    "preprocess.shard",
    "preprocess.sources",
    "shards.reader",
    "trainer.bench",
    "trainer.config",
    "trainer.distributed",
    "trainer.faults",
    "trainer.metrics",
    "trainer.model",
    "trainer.train",
]


def check_imports() -> None:
    """One line: all imported, or each one that did not and why (then exit 2)."""
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - every failure named in the one line
            failed.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if failed:
        print(f"gpu_check: cannot import: {'; '.join(failed)}", flush=True)
        sys.exit(2)
    print(f"imports: ok ({len(MODULES)} modules)", flush=True)


ROWS: list[tuple[str, str]] = []


def row(name: str, value: str) -> None:
    ROWS.append((name, value))
    print(f"  {name}: {value}", flush=True)


def check(title: str) -> Callable:
    """Run one check; a failure becomes its table row (the table is the point of the run)."""

    def wrap(fn: Callable) -> Callable:
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            print(f"== {title}", flush=True)
            start = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported in the table, the other checks go on
                traceback.print_exc()
                first = str(e).splitlines()[0][:300] if str(e) else ""  # a child's error line fits
                row(title, f"FAILED: {type(e).__name__}: {first}")
            print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)

        return run

    return wrap


@dataclass
class Setup:
    """What every check shares: sizes, device, the carried data and the bench set made from it."""

    data: Path  # the carried shards (train + val): alextrain run, eval
    bench: Path  # the training images --copies times over, 32 per shard
    out: Path  # the table and logs only (they travel back from a lent machine)
    work: Path  # the bench set and the run's checkpoints (hundreds of MB: not under out)
    device: object  # torch.device
    gpu: bool
    arch: str
    batch: int
    warm: int
    steps: int
    threads: int

    @property
    def kind(self) -> str:
        return self.device.type


def make_bench_set(data: Path, dest: Path, copies: int, shard_size: int = 32) -> Path:
    """The carried training images `copies` times over (distinct names), re-sharded at the same
    size, with the carried val split and statistics: a set whose epochs are long enough to time."""
    from preprocess.shard import Options, shard
    from preprocess.sources import discover
    from shards import layout
    from shards.reader import images_digest, iter_shard, load_classes, load_dataset, shard_paths

    meta, classes = load_dataset(data), load_classes(data)
    folders = [c.get("wnid") or c["name"] for c in classes]
    tag = hashlib.sha256((data / "dataset.json").read_bytes()).hexdigest()[:8]  # which data it came from
    out = dest / f"bench-{copies}x-{tag}"
    if (out / "stats.json").is_file():  # made by an earlier run: kept (pca-stats is written last)
        return out
    src = dest / f"src-{copies}x-{tag}"
    for split, times in (("train", copies), ("val", 1)):
        for n, sample in enumerate(s for t in shard_paths(data, split) for s in iter_shard(t)):
            folder = src / split / folders[sample.label]
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(times):
                (folder / f"{n:06d}-{k}.jpg").write_bytes(sample.jpeg)
    shard(discover(src), out, Options(size=meta["size"], shard_size=shard_size, progress=False))
    # copies of the same images: the carried statistics are theirs (pca-stats over 16,000 images
    # would take half a minute), bound here to this set's plan, which the loader checks; stats.json
    # last, as the mark of a finished set
    shutil.copyfile(data / layout.MEAN_IMAGE, out / layout.MEAN_IMAGE)
    stats, made = layout.read_json(data / layout.STATS_JSON), load_dataset(out)
    stats["computed_from"] = {
        **stats.get("computed_from", {}),
        "dataset_plan_sha256": made["plan_sha256"],
        "train_images_sha256": images_digest(made, "train"),
        "note": f"copied by bench/gpu_check.py from {data.name}: the same images {copies} times over",
    }
    layout.write_json(out / layout.STATS_JSON, stats)
    shutil.rmtree(src)
    return out


def sync(device) -> None:  # noqa: ANN001
    from pipeline.bench import sync as _sync

    _sync(device)


def timed(batches: Iterator, s: Setup, steps: int | None = None) -> float:
    """img/s of `steps` batches of a running stream, after `s.warm` untimed ones."""
    steps = steps or s.steps
    for _ in range(s.warm):
        next(batches)
    sync(s.device)
    start = time.perf_counter()
    for _ in range(steps):
        out = next(batches)
    del out
    sync(s.device)
    return steps * s.batch / (time.perf_counter() - start)


def options(s: Setup, data: Path) -> tuple:
    """(LoaderConfig, Feed) of the loader rows: the default loader settings, this machine's threads."""
    from pipeline.loader import Feed, LoaderConfig

    return LoaderConfig(num_threads=s.threads), Feed(
        batch_size=s.batch, crop=crop(s, data), device=s.kind, rank=0, world=1
    )


def crop(s: Setup, data: Path) -> int:
    from shards.reader import load_dataset

    size = load_dataset(data)["size"]
    return 224 if s.arch == "alexnet" else size


@check("decode (the training graph's random-crop decode)")
def check_decode(s: Setup) -> None:
    from pipeline.dali import crop_decode_pipeline
    from pipeline.loader import LoaderConfig
    from shards.layout import idx_path
    from shards.reader import load_dataset, shard_paths

    tars = [str(t) for t in shard_paths(s.bench, "train")]
    size = load_dataset(s.bench)["size"]
    for load in (0.0, 0.65, 1.0) if s.gpu else (0.0,):
        pipe = crop_decode_pipeline(
            tars,
            [str(idx_path(Path(t))) for t in tars],
            cfg=LoaderConfig(hw_decoder_load=load, shuffle_buffer=1024),
            size=size,
            crop=crop(s, s.bench),
            gpu=s.gpu,
            batch_size=s.batch,
            num_threads=s.threads,
            device_id=0 if s.gpu else None,
            seed=0,
        )
        pipe.build()
        rate = timed(iter(pipe.run, None), s)
        name = f"decode, hw_decoder_load {load}" if s.gpu else "decode (CPU: no hardware decoder)"
        row(name, f"{rate:,.0f} img/s")
        del pipe
    if s.gpu:
        row("hardware JPEG decoder decodes", hardware_decoder(tars[0]))


def hardware_decoder(tar_path: str) -> str:
    """Does nvImageCodec's hardware-only JPEG backend decode one stored JPEG? (If not, the
    rows above with a share > 0 ran on CUDA cores: `video` missing from the container's
    NVIDIA_DRIVER_CAPABILITIES, or a card without the engine.)"""
    import tarfile

    try:
        from nvidia import nvimgcodec
    except ImportError as e:
        return f"unknown ({e})"
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
        jpeg = tar.extractfile(member).read()
    decoder = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.HW_GPU_ONLY)])
    return "yes" if decoder.decode(jpeg) is not None else "no (is `video` in NVIDIA_DRIVER_CAPABILITIES?)"


@check("training loader")
def check_loader(s: Setup) -> None:
    from pipeline.bench import epoch_boundaries, pass_starts
    from pipeline.loader import EvalLoader, TrainLoader

    cfg, feed = options(s, s.bench)
    start = time.perf_counter()
    one = TrainLoader(s.bench, cfg, feed, epochs=1)  # nothing started ahead: no build in the timed window
    batches = one.epoch(0)
    next(batches)
    sync(s.device)
    row("loader: pipeline start (build + fill + 1st batch)", f"{1000 * (time.perf_counter() - start):.0f} ms")
    steps = min(s.steps, one.steps_per_epoch - s.warm - 1)
    rate = timed(batches, s, steps)
    row("loader: steady img/s (inside one epoch)", f"{rate:,.0f} img/s ({steps} batches of {s.batch})")
    batches.close()
    for mode, ahead in (("next epoch started ahead", True), ("old: built at the boundary", False)):
        m = epoch_boundaries(TrainLoader(s.bench, cfg, feed, epochs=3, ahead=ahead), 3)
        row(
            f"loader: epoch boundary gap, {mode}",
            f"{1000 * m['gap_s']:.1f} ms = {m['gap_in_batches']:.2f} steady batches "
            f"(max {1000 * m['gap_max_s']:.1f} ms; {m['steps_per_epoch']} steps/epoch)",
        )
    p = pass_starts(EvalLoader(s.data, *options(s, s.data), split="val"), 3)
    row(
        "eval: pass start, kept pipeline",
        f"1st pass {1000 * p['first_batch_s'][0]:.0f} ms, later {1000 * p['later_first_s']:.1f} ms",
    )


def run_config(s: Setup, **kw):  # noqa: ANN003, ANN201
    """The config and Env as `alextrain run` makes them (setup: cudnn.benchmark on CUDA, the
    precision's flags); bf16 on the GPU unless `precision` is given."""
    from trainer.config import TrainConfig
    from trainer.distributed import setup
    from trainer.train import resolve_data

    values = dict(data=str(s.bench), arch=s.arch, global_batch=s.batch, num_threads=s.threads, device=s.kind)
    values["precision"] = "bf16" if s.gpu else "fp32"
    cfg = resolve_data(TrainConfig.of(**{**values, **kw}))[0]
    return cfg, setup(cfg)


def synthetic(cfg, env, batch: int):  # noqa: ANN001, ANN201
    import itertools

    import torch

    crop = cfg.model.input_size
    x = torch.randn(batch, 3, crop, crop, device=env.devices[0]) * 60
    y = torch.randint(0, cfg.model.classes, (batch,), device=env.devices[0])
    return itertools.repeat((x, y))


@check("training: synthetic vs DALI input, fp32 vs bf16")
def check_train(s: Setup) -> None:
    from pipeline.bench import Epochs
    from pipeline.loader import TrainLoader
    from trainer.bench import train_rate
    from trainer.train import feed

    cfg, env = run_config(s)
    loader = TrainLoader(s.bench, cfg.loader, feed(cfg, env), epochs=1)  # one epoch: no build timed
    steps = min(s.steps, loader.steps_per_epoch - s.warm)
    synth = train_rate(cfg, env, synthetic(cfg, env, s.batch), s.warm, steps)
    dali = train_rate(cfg, env, Epochs(loader), s.warm, steps)
    how = f"{cfg.run.precision}, channels_last {cfg.run.channels_last}"
    row(
        "train: synthetic input",
        f"{synth.img_per_s:,.0f} img/s, {1000 * synth.seconds / steps:.1f} ms/step ({how}, {steps} steps)",
    )
    row("train: DALI input", f"{dali.img_per_s:,.0f} img/s, {1000 * dali.seconds / steps:.1f} ms/step")
    row("train: DALI / synthetic (target >= 95%)", f"{dali.img_per_s / synth.img_per_s:.1%}")
    fp32_cfg, _ = run_config(s, precision="fp32")
    fp32 = train_rate(fp32_cfg, env, synthetic(fp32_cfg, env, s.batch), s.warm, steps)
    row(
        "train: fp32 vs bf16 step (synthetic)",
        f"fp32 {1000 * fp32.seconds / steps:.1f} ms, bf16 {1000 * synth.seconds / steps:.1f} ms: "
        f"{fp32.seconds / synth.seconds:.2f}x" + ("" if s.gpu else " (CPU dry run: both fp32)"),
    )


@check("two towers, model parallel on one device")
def check_towers(s: Setup) -> None:
    import copy

    import torch

    from trainer.bench import train_rate
    from trainer.distributed import Env
    from trainer.model import build_model

    if s.arch != "alexnet":
        row("two towers placed on [dev, dev]", "n/a (the cifar net has one tower)")
        return
    cfg, _env = run_config(s, precision="fp32")  # set up for one device, as the run's check needs
    cfg = cfg.replace(model_parallel=2)
    torch.manual_seed(0)
    single = build_model(cfg.model).to(s.device).eval()
    placed = copy.deepcopy(single).place([s.device, s.device]).eval()
    crop = cfg.model.input_size
    x = torch.randn(8, 3, crop, crop, device=s.device) * 60
    with torch.no_grad():
        diff = (single(x) - placed(x)).abs().max().item()
    env2 = Env(0, 1, 0, [s.device, s.device], batch=s.batch)
    rate = train_rate(cfg, env2, synthetic(cfg, env2, s.batch), s.warm, s.steps).img_per_s
    row(
        "two towers placed on [dev, dev]",
        f"max |diff| vs one device {diff:.2e}; train {rate:,.0f} img/s (fp32)",
    )


@check("LRN bf16 vs fp32")
def check_lrn(s: Setup) -> None:
    from trainer.model import lrn_bf16_agreement

    r = lrn_bf16_agreement(device=s.device)
    row(
        "LRN bf16 vs fp32 (trainer.model.lrn_bf16_agreement)",
        f"adaptive term lost in {r['torch_lrn']['share_of_term_lost']:.1%} of units with torch's LRN, "
        f"{r['float32_lrn']['share_of_term_lost']:.1%} with Float32LRN; ok={r['ok']}",
    )
    if not r["ok"]:
        raise AssertionError("Float32LRN loses LRN's adaptive term under bf16")


CHILDREN: list = []  # the running `alextrain` process, for the timeout handler to end


def alextrain(s: Setup, *args: str, env: dict | None = None):  # noqa: ANN201
    """`alextrain ARGS` in its own process, as a user runs it; its output appended to the log."""
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    CHILDREN.append(child)
    stdout, stderr = child.communicate()
    CHILDREN.remove(child)
    with (s.out / "alextrain.log").open("a") as log:
        log.write(f"$ alextrain {' '.join(args)}  -> exit {child.returncode}\n{stdout}{stderr}\n")
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


@check("alextrain run, killed mid-epoch, resumed; eval")
def check_run(s: Setup) -> None:
    import torch

    from trainer.faults import DIE_ENV
    from trainer.metrics import METRICS, read_metrics

    run = s.work / "run"
    shutil.rmtree(run, ignore_errors=True)  # a rerun starts fresh
    steps, every, die = (8, 4, 6) if s.gpu else (3, 2, 3)
    batch = min(s.batch, 64)
    common = ["--data", str(s.data), "--out", str(run), "--device", s.kind, "--arch", s.arch]
    common += ["--epochs", "2", "--steps-per-epoch", str(steps), "--checkpoint-every", str(every)]
    common += ["--global-batch", str(batch), "--num-threads", str(s.threads), "--quiet"]
    common += ["--precision", "bf16" if s.gpu else "fp32"]
    start = time.perf_counter()
    killed = alextrain(s, "run", *common, env={DIE_ENV: f"step:{die}"})
    if killed.returncode != -9:
        raise RuntimeError(
            f"the run was to be killed at step {die}, it exited {killed.returncode}: {last_line(killed)}"
        )
    resumed = alextrain(s, "run", *common, "--resume")
    if resumed.returncode != 0:
        raise RuntimeError(f"--resume exited {resumed.returncode}: {last_line(resumed)}")
    where = next(
        (ln for ln in resumed.stdout.splitlines() if ln.startswith("resuming")), "no 'resuming' line"
    )
    rows = read_metrics(run / METRICS)
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    ok = [r["epoch"] for r in rows] == [0, 1] and state["step"] == 2 * steps and f"step {every}" in where
    row(
        f"alextrain run killed at step {die}, --resume",
        f"{'ok' if ok else 'WRONG'}: {where.split(':')[0]}; epochs {[r['epoch'] for r in rows]}, "
        f"step {state['step']}, val top-1 err {rows[-1].get('val_top1_err', float('nan')):.3f}, "
        f"{time.perf_counter() - start:.0f} s",
    )
    ev = alextrain(s, "eval", "--data", str(s.data), "--checkpoint", str(run / "last.pt"), "--device", s.kind)
    if ev.returncode != 0:
        raise RuntimeError(f"alextrain eval exited {ev.returncode}: {last_line(ev)}")
    last = ev.stdout.strip().splitlines()[-1].split() if ev.stdout.strip() else ["no output"]
    row("alextrain eval of last.pt", f"top-1 err, top-5 err, samples: {' '.join(last[1:])}")


def versions(s: Setup) -> str:
    import importlib.metadata as md

    import nvidia.dali
    import torch

    dali = sorted({d.metadata["Name"] for d in md.distributions() if "nvidia-dali" in d.metadata["Name"]})
    card = torch.cuda.get_device_name(0) if s.gpu else "cpu (dry run)"
    cuda = torch.version.cuda
    line = f"{card}; torch {torch.__version__} (CUDA {cuda}); {', '.join(dali)} {nvidia.dali.__version__}"
    builds = [n for n in dali if n.startswith("nvidia-dali-cuda")]
    if s.gpu and cuda and not any(n.endswith(cuda.split(".")[0] + "0") for n in builds):
        line += f" -- WARNING: DALI built for another CUDA major than torch's {cuda}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # paths absolute when parsed: the `alextrain` children run from the repository, not from here
    ap.add_argument(
        "--data", type=absolute, required=True, help="shards with train/ and val/ (bench/gpu_data.sh)"
    )
    ap.add_argument("--out", type=folder, default="gpu-out", help="the table and logs")
    ap.add_argument(
        "--work",
        type=folder,
        default=str(Path(tempfile.gettempdir()) / "alexnet-gpu-check"),
        help="bench set, run",
    )
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=positive, help="default: 256 on cuda, 4 on cpu")
    ap.add_argument(
        "--steps", type=positive, help="timed steps per measurement: default 25 on cuda, 2 on cpu"
    )
    ap.add_argument(
        "--copies", type=positive, help="bench set: the training images N times over (16 on cuda, 1 on cpu)"
    )
    ap.add_argument("--threads", type=positive, default=min(os.cpu_count() or 1, 12))
    a = ap.parse_args()
    check_imports()
    import torch

    from shards.reader import load_classes, load_dataset

    with refused(ap, "--data "):  # one line now, not a traceback from the bench set
        load_dataset(a.data)
        load_classes(a.data)

    gpu = a.device == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no CUDA GPU (use --device cpu for a dry run)")
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    copies = a.copies or (16 if gpu else 1)
    with refused(ap):  # e.g. no val split in --data
        bench = make_bench_set(a.data, a.work, copies)
    meta = load_dataset(bench)
    s = Setup(
        data=a.data,
        bench=bench,
        out=a.out,
        work=a.work,
        device=torch.device("cuda", 0) if gpu else torch.device("cpu"),
        gpu=gpu,
        arch="alexnet" if gpu else "cifar",
        batch=a.batch or (256 if gpu else 4),
        warm=3 if gpu else 1,
        steps=a.steps or (25 if gpu else 2),
        threads=a.threads,
    )
    row("device", versions(s))
    shards = len(list((bench / "train").glob("*.tar")))
    row(
        "bench set",
        f"{meta['splits']['train']['written']} train in {shards} shards at {meta['size']}px, made in "
        f"{time.perf_counter() - start:.0f} s; batch {s.batch}, {s.warm} + {s.steps} steps, {s.arch}",
    )

    def stopped(_signum: int, _frame: object) -> None:  # the shell's `timeout`: the table so far
        for child in CHILDREN:  # a run left going would hold the GPU after the check
            child.kill()
        row("total", f"STOPPED after {time.perf_counter() - start:.0f} s (GPU_CHECK_TIMEOUT)")
        print("\n" + table(a.out), flush=True)
        os._exit(124)

    signal.signal(signal.SIGTERM, stopped)
    for fn in (check_decode, check_loader, check_train, check_towers, check_lrn, check_run):
        fn(s)
        table(a.out)  # on disk after every check, whatever stops the run later
    row("total", f"{time.perf_counter() - start:.0f} s")
    print("\n" + table(a.out))
    if any(v.startswith(("FAILED", "WRONG")) for _, v in ROWS):
        sys.exit(1)


def table(out: Path) -> str:
    """The rows so far as one table, also written to OUT/table.txt."""
    width = max(len(n) for n, _ in ROWS) + 2
    text = "\n".join(f"{n:<{width}}{v}" for n, v in ROWS)
    (out / "table.txt").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
