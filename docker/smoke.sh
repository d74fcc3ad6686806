#!/usr/bin/env bash
# A real container run of the product on a host without GPUs, from the project's own
# docker/Dockerfile and docker/compose.yaml (+ compose.cpu.yaml, the no-GPU override):
#   engine (installed and started if missing) -> base image (debootstrapped here unless
#   BASE_IMAGE is given) -> wheelhouse -> offline image build -> shard -> verify -> pca-stats ->
#   train (1 epoch, CIFAR-10 subset, CPU) -> eval -> tensorboard answering on its port,
# every stage as a non-root user against bind-mounted host folders that user owns. Any failure
# exits non-zero. Slow (minutes); not part of CI. Run as root (it installs and starts dockerd).
#   bash docker/smoke.sh                                  # debootstrapped Debian base, cached
#   BASE_IMAGE=alexnet2012-base:uid1000 bash docker/smoke.sh   # any base with python3 >= 3.11
# Env: SMOKE_DIR (/tmp/alexnet2012-smoke), SMOKE_UID/SMOKE_GID (the invoking user's, or
# 1000:1000 when that is root), SMOKE_PER_CLASS (200 train images per class, a quarter as many
# test), CIFAR_TGZ (../shared/data/cifar10-jpeg.tar.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${SMOKE_DIR:-/tmp/alexnet2012-smoke}
uid=${SMOKE_UID:-${SUDO_UID:-$(id -u)}}
gid=${SMOKE_GID:-${SUDO_GID:-$(id -g)}}
if [ "$uid" = 0 ]; then uid=1000 gid=1000; fi # the point is a non-root user
per_class=${SMOKE_PER_CLASS:-200}
cifar=${CIFAR_TGZ:-$repo/../shared/data/cifar10-jpeg.tar.gz}
image=alexnet2012:smoke
project=alexnet2012-smoke
# shellcheck source=docker/lib.sh
source docker/lib.sh

report() {
  local rc=$?
  [ -n "${compose_ready:-}" ] && compose down --remove-orphans >/dev/null 2>&1 || true
  echo
  echo "smoke: base ${base:-?}, image $image, uid:gid $uid:$gid, $(nproc) cores"
  print_steps "$rc"
}
trap report EXIT

compose() {
  docker compose -p "$project" -f docker/compose.yaml -f docker/compose.cpu.yaml --env-file "$work/smoke.env" "$@"
}

write_env() {
  cat > "$work/smoke.env" <<EOF
IMAGE=$image
UID=$uid
GID=$gid
IMAGENET_DIR=$work/src
SHARDS_DIR=$work/shards
RUNS_DIR=$work/runs
RUN_NAME=smoke
IMAGE_SIZE=32
SHARD_SIZE=1000
ARCH=cifar
CROP=32
EPOCHS=1
GLOBAL_BATCH=64
DEVICE=cpu
MODEL_PARALLEL=1
PROCS_PER_NODE=1
DALI_THREADS=2
SHM_SIZE=1gb
MASTER_PORT=$(free_port)
TENSORBOARD_PORT=$(free_port)
EOF
}

# The entrypoint's one-line refusal of a folder the user cannot write (a root-owned one).
check_refusal() {
  local denied=$work/root-owned out rc=0
  mkdir -p "$denied" && chown 0:0 "$denied" && chmod 755 "$denied"
  out=$(docker run --rm --user "$uid:$gid" -e ALEX_WRITABLE=/runs -v "$denied:/runs" "$image" true 2>&1) || rc=$?
  echo "$out"
  [ "$rc" = 2 ] && grep -q "/runs is not writable by uid:gid $uid:$gid" <<<"$out"
}

check_outputs() {
  local f
  # verified.json: the verify stage recorded its pass, so train skipped hashing the shards
  for f in shards/dataset.json shards/verified.json shards/stats.json shards/mean_image.npy runs/smoke/last.pt runs/smoke/metrics.jsonl; do
    [ -s "$work/$f" ] || { echo "missing $work/$f" >&2; return 1; }
    [ "$(stat -c %u:%g "$work/$f")" = "$uid:$gid" ] || { echo "$work/$f not owned by $uid:$gid" >&2; return 1; }
  done
}

tensorboard_answers() {
  local port
  port=$(sed -n 's/^TENSORBOARD_PORT=//p' "$work/smoke.env")
  compose up -d --no-deps tensorboard
  for _ in $(seq 90); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ]; then
      curl -s "http://127.0.0.1:$port/data/runs" && echo
      return 0
    fi
    sleep 1
  done
  compose logs tensorboard >&2
  return 1
}

prepare_build

# Fresh host folders owned by the (non-root) user; the source stays cached between runs.
mkdir -p "$work"
step "CIFAR-10 subset ($per_class/class)" make_source "$work/src" "$per_class" "$cifar"
rm -rf "$work/shards" "$work/runs" "$work/root-owned"
mkdir -p "$work/shards" "$work/runs"
chown -R "$uid:$gid" "$work/shards" "$work/runs"
write_env
compose_ready=1

step "build (offline, base $base)" compose build train
step "refuses an unwritable folder" check_refusal
step "shard" compose run --rm --no-deps shard
step "verify" compose run --rm --no-deps verify
step "pca-stats" compose run --rm --no-deps pca-stats
step "train (1 epoch, CPU)" compose run --rm --no-deps train
step "eval" compose run --rm --no-deps eval
step "outputs owned by $uid:$gid" check_outputs
step "tensorboard answers" tensorboard_answers
