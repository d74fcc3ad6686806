#!/usr/bin/env bash
# Every GPU check in one run, for a session lent a GPU (see ../shared/docs/GPU.md for carrying
# DALI and webdataset over in parts). Prints a table last; logs go to $OUT (or ./gpu-out).
# Usage, on the GPU machine, from the repository root, with .gpu/data holding shards made here:
#   bash bench/gpu_check.sh .gpu/data/imagenet-x4
set -uo pipefail
data=${1:?usage: bench/gpu_check.sh SHARDS}
out=${OUT:-gpu-out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m trainer.cli bench-loader --data "$data" --device cuda --batches 200 --batch-size 256 --threads 8 --json \
  > "$out/loader_cuda.json" 2> "$out/loader_cuda.log"
python3 -m trainer.cli bench-loader --data "$data" --device cuda --loader reference --batches 40 --threads 12 --json \
  > "$out/loader_reference.json" 2> "$out/loader_reference.log"
python3 bench/train_throughput.py --data "$data" --arch alexnet --device cuda --steps 100 --threads 8 \
  --json "$out/train.json" > "$out/train.log" 2>&1
echo; echo "check                                   result"
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def get(name, key=None):
    try:
        d = json.loads((out / name).read_text())
        return d if key is None else d[key]
    except Exception as e:  # noqa: BLE001
        return f"failed ({e.__class__.__name__}; see {name.replace('.json', '.log')})"
print(f"{'DALI mixed decode+augment, img/s (>= 25,000)':<48}{get('loader_cuda.json', 'img_per_s')}")
print(f"{'reference loader, img/s':<48}{get('loader_reference.json', 'img_per_s')}")
t = get("train.json")
if isinstance(t, dict):
    print(f"{'AlexNet train, synthetic input, img/s':<48}{t['synthetic']:.0f}")
    print(f"{'AlexNet train, DALI input, img/s':<48}{t['dali']:.0f}")
    print(f"{'real / synthetic (>= 95%)':<48}{t['dali'] / t['synthetic']:.1%}")
else:
    print(f"{'AlexNet training':<48}{t}")
PY
