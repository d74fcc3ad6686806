"""Shard throughput, whole command, beside a plain PIL script in the same run.

    python bench/shard_throughput.py [--images DIR] [--repeats 3]

DIR: a folder of <wnid>_<n>.JPEG files (the label is the name up to the first `_`), by default
the 1,000 real ImageNet samples of ../shared/data.

Both sides run as fresh processes, timed from launch to exit (start-up included):
- baseline: a plain PIL script (one process): for each file, open -> convert RGB -> resize the
  shorter side to 256 (Pillow's default antialiased bicubic) -> centre crop -> save JPEG q90;
- ours: `python -m preprocess.cli shard SRC OUT --labels ... --workers 1|2` (tars, DALI index,
  manifest, everything a user gets).
Also prints the start-up time of `alexprep --help`. Runs are interleaved (PIL, ours x1, ours x2,
PIL, ...) so the load of a shared machine hits all alike; the figure per core is images per
CPU-second of the process tree (user + sys), which other users of the CPUs do not inflate, and
wall-clock img/s is printed beside it.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import absolute, last_line, positive  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "data" / "imagenet-samples"

PIL_SCRIPT = """
import sys
from pathlib import Path
from PIL import Image
src, dest, size = Path(sys.argv[1]), Path(sys.argv[2]), 256
for i, f in enumerate(sorted(src.glob("*.JPEG"))):
    img = Image.open(f).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))))
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img.crop((left, top, left + size, top + size)).save(dest / f"{i}.jpg", quality=90)
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children) of one command; one that fails
    ends the bench with its own last error line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        what = "the PIL script" if cmd[1] == "-c" else f"alexprep {cmd[3]}"
        sys.exit(f"shard_throughput: {what} exited {done.returncode}: {last_line(done)}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--images",
        type=absolute,
        default=DEFAULT,
        help="a folder of <wnid>_<n>.JPEG files (default: %(default)s)",
    )
    ap.add_argument("--repeats", type=positive, default=3)
    args = ap.parse_args()
    if not args.images.is_dir():
        ap.error(f"--images {args.images}: {'not a folder' if args.images.exists() else 'no such folder'}")
    files = sorted(args.images.glob("*.JPEG"))
    n = len(files)
    if n == 0:
        ap.error(f"--images {args.images}: no *.JPEG files in it")
    runs: dict[str, list[tuple[float, float]]] = {"pil": [], "w1": [], "w2": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        labels = tmp / "labels.csv"
        with open(labels, "w", newline="") as f:
            csv.writer(f).writerows([(p.name, p.name.split("_")[0]) for p in files])
        for r in range(args.repeats):
            (tmp / f"pil{r}").mkdir()
            runs["pil"].append(
                timed([sys.executable, "-c", PIL_SCRIPT, str(args.images), str(tmp / f"pil{r}")])
            )
            for w in (1, 2):
                # 40 shards of 25: like ImageNet's 513 shards of 2,500, many more shards than
                # workers, so each worker's last shard is a small part of the run
                cmd = [
                    sys.executable,
                    "-m",
                    "preprocess.cli",
                    "shard",
                    str(args.images),
                    str(tmp / f"w{w}-{r}"),
                ]
                cmd += ["--labels", str(labels), "--shard-size", "25", "--workers", str(w), "--quiet"]
                runs[f"w{w}"].append(timed(cmd))
    wall = {k: statistics.median(n / x[0] for x in v) for k, v in runs.items()}
    per_cpu = {k: statistics.median(n / x[1] for x in v) for k, v in runs.items()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; {n} images; median of {args.repeats}, whole commands"
    )
    print(f"{'run':<30}{'img/s (wall)':>14}{'img per CPU-s':>15}")
    for k, name in (
        ("pil", "PIL script (1 process)"),
        ("w1", "alexprep shard --workers 1"),
        ("w2", "alexprep shard --workers 2"),
    ):
        print(f"{name:<30}{wall[k]:>14.1f}{per_cpu[k]:>15.1f}")
    print(
        f"per core vs PIL: {per_cpu['w1'] / per_cpu['pil']:.2f}x by CPU time, "
        f"{wall['w1'] / wall['pil']:.2f}x by wall clock (target >= 1.15x)"
    )
    helps = sorted(timed([sys.executable, "-m", "preprocess.cli", "--help"])[0] for _ in range(5))
    print(f"`alexprep --help`: {helps[2]:.2f} s (median of 5; target < 0.5 s)")
    print(
        f"--workers 2 vs PIL: {wall['w2'] / wall['pil']:.2f}x wall "
        "(target >= 2.07x on an idle 2-core machine); "
        f"{per_cpu['w2'] / per_cpu['pil']:.2f}x by CPU time"
    )


if __name__ == "__main__":
    main()
