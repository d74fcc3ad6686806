#!/usr/bin/env bash
# Make, here, the small dataset bench/gpu_check.sh reads on a lent GPU machine (which has no
# ../shared): the 1,000 real ImageNet samples of ../shared/data as an ImageFolder tree (train: all
# 1,000; val: every fifth), sharded at 256px and with pca-stats, under .gpu/data/imagenet
# (~22 MB, git-ignored; carry it with the last DALI part, see ../shared/docs/GPU.md).
# Usage, from the repository root: bash bench/gpu_data.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.gpu/data/imagenet}
samples=${SAMPLES:-../shared/data/imagenet-samples}
py=${PYTHON:-python3}
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
