#!/usr/bin/env bash
# Every GPU check in one run, one table, for a session lent ONE GPU (H100/H200, CUDA 13, torch
# preinstalled, no network). Nothing to set up: PYTHONPATH is set here; DALI is taken from the
# environment, else installed from carried wheels (/root/whl or .gpu/whl, see
# ../shared/docs/GPU.md); the data is .gpu/data/imagenet, made beforehand on a machine with
# ../shared by `bash bench/gpu_data.sh`. Its first line says whether every module imports;
# it ends inside 5 minutes; the table and logs go to $OUT (or ./gpu-out). Rows: bench/gpu_check.py.
#   bash bench/gpu_check.sh                  # on the GPU machine
#   bash bench/gpu_check.sh --device cpu     # dry run of every code path at toy sizes (tests/test_gpu_check.py)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
data=${GPU_DATA:-.gpu/data/imagenet}
if [ ! -f "$data/dataset.json" ]; then
  echo "gpu_check: no $data/dataset.json: run 'bash bench/gpu_data.sh' where ../shared is, and carry .gpu/data" >&2
  exit 2
fi
if ! "$py" -c 'import nvidia.dali, webdataset' 2>/dev/null; then
  for dir in /root/whl .gpu/whl; do
    if ls "$dir"/nvidia_dali_cuda*.whl >/dev/null 2>&1; then
      "$py" -m pip install -q --no-index --no-deps --target /tmp/alexnet2012-site "$dir"/*.whl || exit 1
      export PYTHONPATH=$PYTHONPATH:/tmp/alexnet2012-site
      break
    fi
  done
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt"
timeout "${GPU_CHECK_TIMEOUT:-290}" "$py" bench/gpu_check.py --data "$data" --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
