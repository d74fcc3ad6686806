#!/usr/bin/env bash
# Two hosts on one machine, for real: the product's image (docker/Dockerfile) run as two
# containers that behave like two hosts, each started by compose (docker/compose.yaml +
# compose.cpu.yaml + compose.two-node.yaml) with its own env file: NODE_RANK 0 and 1, its own
# hostname and address on a user-defined bridge network, its own copy of the shards (mounted
# read-only, as on GPU hosts) and its own runs folder; nothing is shared but the network.
# torchrun's static rendezvous between them, CPU and gloo, the CIFAR net on a CIFAR-10 subset
# for 3 short epochs, checkpoints every 5 steps. Checks, each printed with its figure; any
# failure exits non-zero:
#   (a) ranks follow NODE_RANK: node 0 (whose hostname sorts after node 1's, so c10d's
#       election by name would have made it rank 1) prints the start line and writes the
#       checkpoints; node 1 writes none
#   (b) MASTER_ADDR as an address (the reference run) and as a hostname (the crash runs)
#   (c) node 1 killed mid-epoch (kill -9 of all its processes from outside, not `docker stop`)
#       recovers with no human step (restart policy + whole-job restart + --auto-resume) and
#       ends with weights identical to the uninterrupted run (max abs difference printed)
#   (d) the same with node 0 killed
#   (e) a restart does not hash the shards again: one hashing pass per host per run, however
#       many times it starts (the clean pass is kept with the run, the shards being read-only)
# Slow (minutes); not part of CI. Run as root (it installs and starts dockerd if needed).
#   bash docker/two-node.sh                                   # debootstrapped Debian base, cached
#   BASE_IMAGE=alexnet2012-base:uid1000 bash docker/two-node.sh
# Env: TWO_NODE_DIR (/tmp/alexnet2012-two-node), TWO_NODE_PER_CLASS (100 train images per class,
# a quarter as many test), CIFAR_TGZ (../shared/data/cifar10-jpeg.tar.gz), TWO_NODE_SUBNET
# (172.30.77: node 0 is .10, node 1 .11), TWO_NODE_TIMEOUT (900 s per training run).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${TWO_NODE_DIR:-/tmp/alexnet2012-two-node}
uid=${SUDO_UID:-$(id -u)}
gid=${SUDO_GID:-$(id -g)}
if [ "$uid" = 0 ]; then uid=1000 gid=1000; fi # the point is a non-root user
per_class=${TWO_NODE_PER_CLASS:-100}
cifar=${CIFAR_TGZ:-$repo/../shared/data/cifar10-jpeg.tar.gz}
subnet=${TWO_NODE_SUBNET:-172.30.77}
limit=${TWO_NODE_TIMEOUT:-900}
image=alexnet2012:two-node
network=alexnet2012-cluster
hostname0=host-b # NODE_RANK 0; sorts after node 1's name on purpose (check a)
hostname1=host-a
epochs=3
every=5
# shellcheck source=docker/lib.sh
source docker/lib.sh

report() {
  local rc=$?
  for r in 0 1; do node "$r" down --remove-orphans >/dev/null 2>&1 || true; done
  docker network rm "$network" >/dev/null 2>&1 || true
  echo
  echo "two-node: base ${base:-?}, image $image, uid:gid $uid:$gid, $(nproc) cores; logs in $work/logs"
  print_steps "$rc"
}
trap report EXIT

prep() { docker compose -p alexnet2012-2node-prep -f docker/compose.yaml -f docker/compose.cpu.yaml --env-file "$work/prep.env" "$@"; }
node() { # node R COMPOSE-ARGS...: compose as host R would run it
  local r=$1
  shift
  docker compose -p "alexnet2012-node$r" -f docker/compose.yaml -f docker/compose.cpu.yaml \
    -f docker/compose.two-node.yaml --env-file "$work/node$r.env" "$@"
}
container() { node "$1" ps -aq train; }

common_env() {
  cat <<EOF
IMAGE=$image
UID=$uid
GID=$gid
IMAGE_SIZE=32
SHARD_SIZE=250
ARCH=cifar
CROP=32
EPOCHS=$epochs
GLOBAL_BATCH=64
CHECKPOINT_EVERY=$every
DEVICE=cpu
MODEL_PARALLEL=1
PROCS_PER_NODE=1
DALI_THREADS=1
SHM_SIZE=1gb
EOF
}

write_envs() { # write_envs RUN_NAME MASTER_ADDR: one env file per host
  local r ip name
  for r in 0 1; do
    ip=$subnet.1$r
    name=hostname$r
    {
      common_env
      cat <<EOF
SHARDS_DIR=$work/node$r/shards
RUNS_DIR=$work/node$r/runs
RUN_NAME=$1
NNODES=2
NODE_RANK=$r
MASTER_ADDR=$2
MASTER_PORT=29500
RESTARTS=6
NODE_HOSTNAME=${!name}
NODE_IP=$ip
CLUSTER_NETWORK=$network
EOF
    } > "$work/node$r.env"
  done
}

write_prep_env() { # the shard and pca-stats stages, run once on one "host"
  {
    common_env
    echo "IMAGENET_DIR=$work/src"
    echo "SHARDS_DIR=$work/shards"
    echo "RUNS_DIR=$work/shards"
  } > "$work/prep.env"
}

make_shards() { # once, as the product's own stages do it; then each host gets its own copy
  rm -rf "$work/shards" && mkdir -p "$work/shards" && chown "$uid:$gid" "$work/shards"
  prep run --rm --no-deps shard
  prep run --rm --no-deps pca-stats
  local r
  for r in 0 1; do
    rm -rf "$work/node$r" && mkdir -p "$work/node$r/runs"
    cp -a "$work/shards" "$work/node$r/shards"
    rm -f "$work/node$r/shards/verified.json" # never verified: the first start must hash
    chown -R "$uid:$gid" "$work/node$r"
  done
}

make_network() {
  docker network rm "$network" >/dev/null 2>&1 || true
  docker network create --driver bridge --subnet "$subnet.0/24" "$network" >/dev/null
}

status() { docker inspect -f '{{.State.Status}}:{{.State.ExitCode}}:{{.RestartCount}}' "$1"; }

wait_done() { # wait_done RUN: both hosts' train containers exit 0 on their own (restarts allowed)
  local start=$SECONDS c0 c1 s0 s1 bad=0
  c0=$(container 0) c1=$(container 1)
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    s0=$(status "$c0") s1=$(status "$c1")
    if [[ $s0 == exited:0:* && $s1 == exited:0:* ]]; then
      save_logs "$1"
      return 0
    fi
    # exited non-zero and not restarted within ~10 s: the restart budget is spent
    if [[ $s0 == exited:[1-9]* || $s1 == exited:[1-9]* ]]; then bad=$((bad + 1)); else bad=0; fi
    if [ "$bad" -ge 5 ]; then break; fi
    sleep 2
  done
  save_logs "$1"
  echo "run $1 did not finish: node0 $s0, node1 $s1 (status:exit:restarts); logs in $work/logs" >&2
  return 1
}

save_logs() {
  mkdir -p "$work/logs"
  local r
  for r in 0 1; do docker logs -t "$(container "$r")" > "$work/logs/$1-node$r.log" 2>&1 || true; done
}

start_run() { # start_run RUN MASTER_ADDR: both hosts up, as an operator would start them
  write_envs "$1" "$2"
  node 0 down --remove-orphans >/dev/null 2>&1 || true
  node 1 down --remove-orphans >/dev/null 2>&1 || true
  node 1 up -d --no-deps train # the order does not matter: node 1 waits for node 0's store
  node 0 up -d --no-deps train
}

# --- the runs
reference_run() { # uninterrupted, MASTER_ADDR as an address
  local t=$SECONDS
  start_run ref "$subnet.10"
  wait_done ref
  note "(b) MASTER_ADDR=$subnet.10 (an address): run ref, $(steps ref), finished in $((SECONDS - t)) s"
}

steps() { grep -ao '[0-9]* steps per epoch, [0-9]* epochs' "$work/logs/$1-node0.log" | head -1; }

ckpt_mtime() { stat -c %Y.%y "$work/node0/runs/$1/last.pt" 2>/dev/null || echo none; }

crash_run() { # crash_run RUN NODE LETTER: MASTER_ADDR as node 0's hostname; kill NODE mid-epoch 1
  local run=$1 victim=$2 t=$SECONDS seen=0 last=none now pids killed_at kill_time c back
  start_run "$run" "$hostname0"
  # the 4th checkpoint is step 20 (steps 5, 10, epoch 0's end at 15, 20): 5 steps into epoch 1
  while [ "$seen" -lt 4 ] && [ $((SECONDS - t)) -lt "$limit" ]; do
    now=$(ckpt_mtime "$run")
    if [ "$now" != none ] && [ "$now" != "$last" ]; then seen=$((seen + 1)) last=$now; fi
    sleep 0.2
  done
  [ "$seen" -ge 4 ] || { echo "no 4th checkpoint in $run" >&2; return 1; }
  sleep 1
  c=$(container "$victim")
  mapfile -t pids < <(docker top "$c" -eo pid | tail -n +2)
  killed_at=$SECONDS kill_time=$(date +%s.%N)
  kill -9 "${pids[@]}" # every process of the "host" at once, from outside; not `docker stop`
  echo "   killed node $victim (${#pids[@]} processes: ${pids[*]}) at $((killed_at - t)) s"
  wait_done "$run"
  local resumed restarts0 restarts1
  resumed=$(grep -ao 'resuming at epoch [0-9]* step [0-9]*' "$work/logs/$run-node0.log" | tail -1)
  [ -n "$resumed" ] || { echo "node 0 never resumed in $run" >&2; return 1; }
  restarts0=$(status "$(container 0)" | cut -d: -f3) restarts1=$(status "$(container 1)" | cut -d: -f3)
  back=$(grep -a 'resuming at epoch' "$work/logs/$run-node0.log" | tail -1 | cut -d' ' -f1)
  back=$(python3 -c 'import sys; print(f"{float(sys.argv[1]) - float(sys.argv[2]):.0f}")' "$(date -d "$back" +%s.%N)" "$kill_time")
  note "(b) MASTER_ADDR=$hostname0 (a hostname): run $run, $(steps "$run")"
  note "($3) node $victim killed -9 at $((killed_at - t)) s: $resumed; training again $back s after the kill (RESTART_DELAY 30 s of it); restarts: node0 $restarts0, node1 $restarts1; run done $((SECONDS - killed_at)) s after the kill"
}

compare_weights() { # compare_weights RUN LETTER: final weights of RUN vs the reference, exactly
  local out
  out=$(docker run --rm --user "$uid:$gid" -v "$work/node0/runs:/runs:ro" "$image" python -c '
import sys, torch
a = torch.load(f"/runs/ref/last.pt", map_location="cpu", weights_only=True)
b = torch.load(f"/runs/{sys.argv[1]}/last.pt", map_location="cpu", weights_only=True)
assert a["model"].keys() == b["model"].keys()
diff = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])
rows = [(r["epoch"], r["train_loss"], r.get("val_top1_err")) for r in a["history"]]
same = rows == [(r["epoch"], r["train_loss"], r.get("val_top1_err")) for r in b["history"]]
n, sa, sb = len(a["model"]), a["step"], b["step"]
print(f"{n} tensors, max abs diff {diff:g}; step {sb} vs {sa}; metrics rows identical: {same}")
sys.exit(0 if diff == 0 and same and a["step"] == b["step"] else 1)
' "$1")
  note "($2) $1 vs ref: $out"
}

check_ranks() { # (a), over every run: node 0 alone holds checkpoints and says the start line
  local run line=""
  for run in ref crash1 crash0; do
    [ -s "$work/node0/runs/$run/last.pt" ] || { echo "node 0 has no $run/last.pt" >&2; return 1; }
    [ ! -e "$work/node1/runs/$run/last.pt" ] || { echo "node 1 wrote $run/last.pt: rank 0 is not on node 0" >&2; return 1; }
    grep -aq 'starting: global batch 64 (32 per process x 2)' "$work/logs/$run-node0.log" ||
      { echo "node 0 did not say the start line in $run" >&2; return 1; }
    if grep -aq 'starting: global batch' "$work/logs/$run-node1.log"; then
      echo "node 1 said rank 0's start line in $run" >&2
      return 1
    fi
    line+="$run "
  done
  note "(a) rank 0 on node 0 ($hostname0, NODE_RANK 0; c10d would rank by name: $hostname1 first): start line and last.pt on node 0 only, in runs: $line"
}

check_hashing() { # (e): each host hashes once per run, though the crash runs started it twice+
  local run r n starts secs
  for run in crash1 crash0; do
    for r in 0 1; do
      n=$(grep -ac 'against their SHA-256' "$work/logs/$run-node$r.log" || true)
      starts=$(grep -ac 'shards checked; waiting' "$work/logs/$run-node$r.log" || true)
      [ "$n" = 1 ] && [ "$starts" -ge 2 ] || { echo "$run node $r: $n hashing passes in $starts starts" >&2; return 1; }
      secs=$(hash_seconds "$work/logs/$run-node$r.log")
      note "(e) $run node $r: $starts starts, 1 hashing pass ($secs s), none after the restart (record: runs/$run/verified-shards/$(eval echo "\$hostname$r").json)"
    done
  done
}

hash_seconds() { # from the timestamps of the hashing line and the next "shards checked" line
  awk '/against their SHA-256/ {a = $1} a && /shards checked; waiting/ {b = $1; exit} END {
    cmd = "date -d " a " +%s.%N"; cmd | getline x; close(cmd)
    cmd = "date -d " b " +%s.%N"; cmd | getline y; close(cmd)
    printf "%.2f", y - x }' "$1"
}

prepare_build
mkdir -p "$work"
step "CIFAR-10 subset ($per_class/class)" make_source "$work/src" "$per_class" "$cifar"
write_prep_env
step "build (offline, base $base)" prep build train
step "shard + pca-stats, a copy per host" make_shards
step "network $network ($subnet.0/24)" make_network
step "run ref: uninterrupted, MASTER_ADDR=address" reference_run
step "run crash1: node 1 killed -9 mid-epoch" crash_run crash1 1 c
step "(c) crash1 weights == ref" compare_weights crash1 c
step "run crash0: node 0 killed -9 mid-epoch" crash_run crash0 0 d
step "(d) crash0 weights == ref" compare_weights crash0 d
step "(a) ranks follow NODE_RANK" check_ranks
step "(e) restarts do not hash again" check_hashing
