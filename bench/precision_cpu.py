"""Does `--precision bf16` learn what fp32 learns? Short CIFAR-10 runs in each, several seeds.

    python bench/precision_cpu.py [--work DIR] [--per-class 300] [--epochs 10] [--seeds 1 2 3]
                                  [--device cpu]

Makes, once, under --work a CIFAR-10 subset from ../shared/data/cifar10-jpeg.tar.gz (the first
`--per-class` train images of each class and a third as many test images, 32px), shards it and
runs pca-stats. Then, interleaved by seed, `alextrain run --arch cifar --global-batch 32
--lr 0.003` (the README's small-data settings) in fp32 (the baseline) and in bf16 (autocast;
the LRN stays fp32 inside, trainer/model.py), everything else equal, and prints per epoch the
val top-1 error of each (mean and range over the seeds), the bf16 - fp32 difference beside the
seed-to-seed spread of fp32 (the noise it is judged against), and the ratio of the runs' wall
times. On a CPU bf16 is usually not faster; the point here is the learning curve
(issue 20); the GPU comparison of speed is bench/gpu_check.sh's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import at_least, cuda_or_error, folder, last_line, positive  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
PRECISIONS = ("fp32", "bf16")  # the baseline first


def make_subset(tgz: Path, dest: Path, per_class: int) -> Path:
    """SRC/{train,test}/<class>/*.jpg with the first `per_class` (train) and per_class // 3
    (test) images of each class, in the archive's order."""
    src = dest / f"src-{per_class}"
    if (src / ".complete").is_file():
        return src
    limit = {"train": per_class, "test": max(1, per_class // 3)}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(tgz) as tar:
        for m in tar:
            parts = Path(m.name).parts  # cifar10/<split>/<class>/<n>.jpg
            if not m.isfile() or len(parts) != 4 or parts[1] not in limit:
                continue
            key = (parts[1], parts[2])
            if taken.get(key, 0) >= limit[parts[1]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            out = src / parts[1] / parts[2] / parts[3]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
    (src / ".complete").write_text("")
    return src


def cli(*args: object) -> None:
    """`python -m MODULE ARGS` from the repository; one that fails ends the bench with its own
    last error line."""
    cmd = [sys.executable, "-m", *map(str, args)]
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        command = {"preprocess.cli": "alexprep", "trainer.cli": "alextrain"}.get(str(args[0]), args[0])
        sys.exit(f"precision_cpu: {command} {args[1]} exited {done.returncode}: {last_line(done)}")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work", type=folder, help="the subset, its shards and the runs (kept); default: a new temp folder"
    )
    ap.add_argument("--per-class", type=positive, default=300, help="training images per class")
    ap.add_argument("--epochs", type=positive, default=10)
    ap.add_argument("--seeds", type=at_least(0), nargs="+", default=[1, 2, 3])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    cuda_or_error(ap, a.device)
    work = a.work or Path(tempfile.mkdtemp(prefix="precision-"))
    data = work / f"shards-{a.per_class}"
    if not (data / "stats.json").is_file():
        if not CIFAR.is_file():
            ap.error(f"no {CIFAR} to make the CIFAR-10 subset from (nor {data} made earlier)")
        src = make_subset(CIFAR, work, a.per_class)
        cli("preprocess.cli", "shard", src, data, "--size", 32, "--quiet")
        cli("preprocess.cli", "pca-stats", data, "--quiet")
    runs: dict[str, list[list[dict]]] = {p: [] for p in PRECISIONS}
    seconds: dict[str, float] = {p: 0.0 for p in PRECISIONS}
    for seed in a.seeds:
        for p in PRECISIONS:
            out = work / f"run-{p}-seed{seed}-{a.epochs}e"
            if not (out / "metrics.jsonl").is_file() or len(rows(out)) < a.epochs:
                began = time.monotonic()
                args = ["--data", data, "--out", out, "--arch", "cifar", "--epochs", a.epochs, "--seed", seed]
                args += ["--global-batch", 32, "--lr", 0.003, "--precision", p, "--device", a.device]
                args += ["--num-threads", 1, "--quiet"]
                args += ["--resume"] if (out / "last.pt").is_file() else []
                cli("trainer.cli", "run", *args)
                seconds[p] += time.monotonic() - began
            runs[p].append(rows(out))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}; device {a.device}")
    print(f"data: {data} ({a.per_class} train images per class); {a.epochs} epochs; seeds {a.seeds}")
    print("epoch  fp32 val err (mean, range)   bf16 val err (mean, range)   bf16 - fp32   fp32 spread")
    for e in range(a.epochs):
        f = [r[e]["val_top1_err"] for r in runs["fp32"]]
        b = [r[e]["val_top1_err"] for r in runs["bf16"]]
        fm, bm = statistics.mean(f), statistics.mean(b)
        print(
            f"{e:>5}  {fm:.4f} ({min(f):.4f}-{max(f):.4f})      {bm:.4f} ({min(b):.4f}-{max(b):.4f})"
            f"      {bm - fm:+.4f}       {max(f) - min(f):.4f}"
        )
    if all(seconds.values()):
        print(f"wall time in training runs: fp32 {seconds['fp32']:.0f} s, bf16 {seconds['bf16']:.0f} s "
              f"(bf16 / fp32 = {seconds['bf16'] / seconds['fp32']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
