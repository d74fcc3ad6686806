#!/usr/bin/env bash
# Make, here, the small dataset bench/gpu_check.sh reads on a lent GPU machine (which has no
# ../shared): the 1,000 real ImageNet samples of ../shared/data as an ImageFolder tree (train: all
# 1,000; val: every fifth), sharded at 256px and with pca-stats, under .gpu/data/imagenet
# (~22 MB, git-ignored; carry it with the last DALI part, see ../shared/docs/GPU.md).
# Usage, from the repository root: bash bench/gpu_data.sh [OUT]. An OUT that exists is made
# again only if it is a dataset (dataset.json) or empty: anything else there is refused, not removed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/data/imagenet}
samples=${SAMPLES:-../shared/data/imagenet-samples}
if [ -x .venv/bin/python ]; then py=${PYTHON:-.venv/bin/python}; else py=${PYTHON:-python3}; fi
if [ -e "$out" ] && ! { [ -f "$out/dataset.json" ] || { [ -d "$out" ] && [ -z "$(ls -A "$out")" ]; }; }; then
  echo "gpu_data: $out exists and is not a dataset (no dataset.json): not removed; give another OUT" >&2
  exit 2
fi
if ! "$py" -c "import pyarrow, preprocess.cli" 2>/dev/null; then
  echo "gpu_data: $py cannot import the project (pip install -e . first, or set PYTHON)" >&2
  exit 2
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
i=0
for f in "$samples"/*.JPEG; do
  name=$(basename "$f")
  wnid=${name%%_*}
  mkdir -p "$src/train/$wnid" "$src/val/$wnid"
  ln -s "$(realpath "$f")" "$src/train/$wnid/$name"
  [ $((i % 5)) = 0 ] && ln -s "$(realpath "$f")" "$src/val/$wnid/$name"
  i=$((i + 1))
done
rm -rf "$out"
"$py" -m preprocess.cli shard "$src" "$out" --shard-size 250 --quiet
"$py" -m preprocess.cli pca-stats "$out" --quiet
echo "$out: $(du -sh "$out" | cut -f1), $i train images, $(((i + 4) / 5)) val"
