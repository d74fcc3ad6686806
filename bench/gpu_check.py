"""Every GPU check in one run, one table: see bench/gpu_check.sh (the entry point).

    python bench/gpu_check.py --data .gpu/data/imagenet --out OUT [--device cuda|cpu]

Rows (each check runs on its own; one that fails prints its error in the table, the others
still run):
- DALI decode alone (readers.webdataset -> decoders.image), mixed with the hardware decoder's
  share at the project's default and at 0, and whether nvImageCodec's hardware JPEG backend
  decodes at all (it needs NVIDIA_DRIVER_CAPABILITIES with `video` in a container);
- DALI decode + the full paper augmentation (the training loader itself);
- AlexNet training img/s and step time with synthetic input and with the DALI loader, measured
  the same way: one started batch stream per input, the same warm-up steps, the same timed steps,
  so neither pays pipeline start-up inside the timed window;
- `alextrain run --device DEV`: 2 epochs of 10 steps with eval and a checkpoint, killed after
  epoch 1 and resumed with --resume; then `alextrain eval` of the checkpoint;
- the two-tower model-parallel code path (`--model-parallel 2`) with both towers on the one
  device: its output against the one-device model with the same weights, and its img/s;
- bf16 vs fp32 agreement of the LRN layers, from trainer.model's function for it when present.
With --device cpu the same code paths run on the CPU with small sizes (a dry run for hosts
without a GPU); hardware decoding is then n/a.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import itertools
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.bench import Epochs, sync  # noqa: E402
from pipeline.loader import Feed, LoaderConfig, TrainLoader  # noqa: E402
from shards.reader import load_dataset  # noqa: E402
from trainer.bench import train_rate  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.distributed import Env  # noqa: E402
from trainer.metrics import METRICS, read_metrics  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.train import resolve_data  # noqa: E402

ROWS: list[tuple[str, str]] = []


def row(name: str, value: str) -> None:
    ROWS.append((name, value))
    print(f"  {name}: {value}", flush=True)


def check(title: str) -> Callable:
    """Run one check; a failure becomes its table row (the table is the point of the run)."""

    def wrap(fn: Callable) -> Callable:
        def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            print(f"== {title}", flush=True)
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported in the table, the other checks go on
                traceback.print_exc()
                row(title, f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:60] if str(e) else ''}")

        return run

    return wrap


def stream_rate(batches: Iterator, warm: int, steps: int, batch: int, device: torch.device) -> float:
    """img/s of `steps` batches from an already running stream, after `warm` untimed ones."""
    for _ in range(warm):
        next(batches)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        out = next(batches)
    del out
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def shards(data: Path) -> tuple[list[str], list[str]]:
    tars = sorted(str(p) for p in (data / "train").glob("*.tar"))
    return tars, [t[: -len(".tar")] + ".idx" for t in tars]


def decode_stream(data: Path, batch: int, threads: int, gpu: bool, hw_load: float) -> Iterator:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if gpu else None, seed=0)
    def decode_only():
        tars, idxs = shards(data)
        jpg, _cls = fn.readers.webdataset(paths=tars, index_paths=idxs, ext=["jpg", "cls"])
        kw = dict(device="mixed", hw_decoder_load=hw_load) if gpu else dict(device="cpu")
        return fn.decoders.image(jpg, output_type=types.RGB, **kw)

    pipe = decode_only()
    pipe.build()
    while True:
        yield pipe.run()


def hardware_decoder(data: Path) -> str:
    """Does nvImageCodec's hardware-only JPEG backend decode one of the shards' JPEGs?"""
    import tarfile

    from nvidia import nvimgcodec

    with tarfile.open(shards(data)[0][0]) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
        jpeg = tar.extractfile(member).read()
    decoder = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.HW_GPU_ONLY)])
    return "yes" if decoder.decode(jpeg) is not None else "no (is `video` in NVIDIA_DRIVER_CAPABILITIES?)"


@check("DALI decode")
def check_decode(a: argparse.Namespace, device: torch.device) -> None:
    gpu = device.type == "cuda"
    loads = (0.65, 0.0) if gpu else (None,)
    for load in loads:
        rate = stream_rate(
            decode_stream(a.data, a.batch, a.threads, gpu, load or 0.0), 5, a.steps, a.batch, device
        )
        name = f"DALI mixed decode, hw_decoder_load={load}" if gpu else "DALI decode (CPU dry run)"
        row(name, f"{rate:,.0f} img/s")
    row("hardware JPEG decoder", hardware_decoder(a.data) if gpu else "n/a (cpu)")


def epochs(a: argparse.Namespace, device: torch.device) -> Epochs:
    """The training loader's batches as one stream (one DALI pipeline per epoch: on the small
    check set, a few steps an epoch, those starts fall inside the timed window, and each row
    says how many did)."""
    feed = Feed(batch_size=a.batch, device=device.type, rank=0, world=1)
    return Epochs(TrainLoader(a.data, LoaderConfig(num_threads=a.threads), feed))


@check("DALI decode + augmentation")
def check_augment(a: argparse.Namespace, device: torch.device) -> None:
    batches = epochs(a, device)
    stream = iter(batches)
    next(stream)
    before = batches.starts
    rate = stream_rate(stream, 4, a.steps, a.batch, device)
    row(
        "DALI decode + full augmentation", f"{rate:,.0f} img/s ({batches.starts - before} epoch starts timed)"
    )


def bench_config(a: argparse.Namespace, device: torch.device, **kw) -> TrainConfig:  # noqa: ANN003
    """The run's config as `alextrain run` resolves it against the data (classes, crop, val split)."""
    cfg = TrainConfig.of(
        data=str(a.data), global_batch=a.batch, num_threads=a.threads, device=device.type, **kw
    )
    return resolve_data(cfg)[0]


@check("AlexNet training, synthetic vs DALI input")
def check_train(a: argparse.Namespace, device: torch.device) -> None:
    cfg = bench_config(a, device)
    env = Env(0, 1, 0, [device], batch=a.batch)
    crop = cfg.model.input_size
    x = torch.randn(a.batch, 3, crop, crop, device=device) * 60
    y = torch.randint(0, cfg.model.classes, (a.batch,), device=device)
    synthetic = train_rate(cfg, env, itertools.repeat((x, y)), 5, a.steps).img_per_s
    timed = train_rate(cfg, env, epochs(a, device), 5, a.steps)
    dali = timed.img_per_s
    row("AlexNet train, synthetic input", f"{synthetic:,.0f} img/s, {1000 * a.batch / synthetic:.1f} ms/step")
    row(
        "AlexNet train, DALI input",
        f"{dali:,.0f} img/s, {1000 * a.batch / dali:.1f} ms/step ({timed.starts} epoch starts timed)",
    )
    row("DALI / synthetic (target >= 95%)", f"{dali / synthetic:.1%}")


def alextrain(out: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    (out / "alextrain.log").open("a").write(f"$ alextrain {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(
            f"alextrain {args[0]} exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
        )
    return proc


@check("alextrain run: 20 steps, eval, checkpoint, resume")
def check_run(a: argparse.Namespace, device: torch.device) -> None:
    run = a.out / "run"
    shutil.rmtree(run, ignore_errors=True)  # a rerun starts fresh
    steps = 10 if device.type == "cuda" else 2  # 20 steps on the GPU; a dry run only walks the path
    common = [
        "--data",
        str(a.data),
        "--out",
        str(run),
        "--device",
        device.type,
        "--steps-per-epoch",
        str(steps),
    ]
    batch = min(a.batch, 64)  # 1,000 training images: at least 10 steps per epoch
    common += ["--batch-size", str(batch), "--num-threads", str(a.threads), "--quiet"]
    start = time.perf_counter()
    alextrain(a.out, "run", *common, "--epochs", "1")
    alextrain(a.out, "run", *common, "--epochs", "2", "--resume")
    rows = read_metrics(run / METRICS)
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    ev = alextrain(
        a.out, "eval", "--data", str(a.data), "--checkpoint", str(run / "last.pt"), "--device", device.type
    )
    ok = [r["epoch"] for r in rows] == [0, 1] and state["step"] == 2 * steps
    seconds = time.perf_counter() - start
    last = rows[-1]
    row(
        f"alextrain run 2x{steps} steps + resume",
        f"{'ok' if ok else 'WRONG'}: epochs {[r['epoch'] for r in rows]}, step {state['step']}, "
        f"val top-1 err {last.get('val_top1_err', float('nan')):.3f}, {seconds:.0f} s",
    )
    last_line = ev.stdout.strip().splitlines()[-1].split() if ev.stdout.strip() else ["no output"]
    row("alextrain eval of last.pt", f"top-1 err, top-5 err, samples: {' '.join(last_line[1:])}")


@check("two towers, model parallel on one device")
def check_towers(a: argparse.Namespace, device: torch.device) -> None:
    cfg = bench_config(a, device, model_parallel=2)
    crop = cfg.model.input_size
    torch.manual_seed(0)
    single = build_model(cfg.model).to(device).eval()
    placed = copy.deepcopy(single).place([device, device]).eval()
    x = torch.randn(8, 3, crop, crop, device=device) * 60
    with torch.no_grad():
        diff = (single(x) - placed(x)).abs().max().item()
    env = Env(0, 1, 0, [device, device], batch=a.batch)
    y = torch.randint(0, cfg.model.classes, (a.batch,), device=device)
    xb = torch.randn(a.batch, 3, crop, crop, device=device) * 60
    rate = train_rate(cfg.replace(precision="bf16"), env, itertools.repeat((xb, y)), 3, a.steps).img_per_s
    row("two towers placed on [dev, dev]", f"max |diff| vs one device {diff:.2e}; train {rate:,.0f} img/s")


@check("LRN bf16 vs fp32")
def check_lrn(_a: argparse.Namespace, device: torch.device) -> None:
    import trainer.model as model

    candidates = [
        n
        for n in dir(model)
        if "lrn" in n.lower() and any(k in n.lower() for k in ("bf16", "agree", "precision"))
    ]
    fn = next((getattr(model, n) for n in candidates if callable(getattr(model, n))), None)
    if fn is None:
        row("LRN bf16 vs fp32 agreement", "n/a (no such function in trainer.model)")
        return
    try:
        result = fn(device=device)
    except TypeError:
        result = fn()
    if isinstance(result, dict) and {"torch_lrn", "float32_lrn"} <= set(result):
        lost = {k: result[k]["share_of_term_lost"] for k in ("torch_lrn", "float32_lrn")}
        result = (
            f"adaptive term lost in {lost['torch_lrn']:.1%} of units with torch's LRN, "
            f"{lost['float32_lrn']:.1%} with Float32LRN; ok={result.get('ok')}"
        )
    row(f"LRN bf16 vs fp32 ({fn.__name__})", str(result)[:110])


def dali_build() -> str:
    names = [
        d.metadata["Name"] for d in importlib.metadata.distributions() if "nvidia-dali" in d.metadata["Name"]
    ]
    import nvidia.dali

    return f"{', '.join(sorted(set(names))) or 'nvidia-dali'} {nvidia.dali.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="shards with train/ and val/ (bench/gpu_data.sh)"
    )
    ap.add_argument("--out", type=Path, default=Path("gpu-out"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, help="default: 256 on cuda, 8 on cpu")
    ap.add_argument("--steps", type=int, help="timed steps per measurement: default 50 on cuda, 2 on cpu")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 12))
    a = ap.parse_args()
    gpu = a.device == "cuda"
    a.batch = a.batch or (256 if gpu else 8)
    a.steps = a.steps or (50 if gpu else 2)
    a.out.mkdir(parents=True, exist_ok=True)
    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no CUDA GPU (use --device cpu for a dry run)")
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    meta = load_dataset(a.data)
    card = torch.cuda.get_device_name(0) if gpu else "cpu (dry run)"
    start = time.perf_counter()
    row("device", f"{card}; torch {torch.__version__} (CUDA {torch.version.cuda}); {dali_build()}")
    splits = ", ".join(f"{k} {v['written']}" for k, v in meta["splits"].items())
    row("data", f"{a.data}: {splits} at {meta['size']}px; batch {a.batch}, {a.steps} timed steps")
    for fn in (check_decode, check_augment, check_train, check_run, check_towers, check_lrn):
        fn(a, device)
    row("total", f"{time.perf_counter() - start:.0f} s")
    width = max(len(n) for n, _ in ROWS) + 2
    table = "\n".join(f"{n:<{width}}{v}" for n, v in ROWS)
    (a.out / "table.txt").write_text(table + "\n")
    print("\n" + table)
    if any(v.startswith(("FAILED", "WRONG")) for _, v in ROWS):
        sys.exit(1)


if __name__ == "__main__":
    main()
