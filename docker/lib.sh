# Shared by docker/smoke.sh and docker/two-node.sh (sourced, not run): timed steps, the Docker
# engine, Compose v2, the base image and wheelhouse, and a CIFAR-10 subset as an ImageFolder tree.
# The sourcing script sets `repo` (the repository root) and `work` (its scratch folder) first.
# shellcheck shell=bash

timings=()
current=
t0=$(date +%s)

step() { # step NAME COMMAND...: run under set -e (a failing command anywhere in it ends the
  # script, and the EXIT trap reports the step), and time it
  local start
  current=$1
  shift
  echo "== $current: $*"
  start=$(date +%s)
  "$@"
  timings+=("$(printf '%-44s %5ss  ok' "$current" "$(($(date +%s) - start))")")
  current=
}

note() { # note LINE: a figure for the final table (a check's result), printed now too
  echo "   $1"
  timings+=("$(printf '    %s' "$1")")
}

print_steps() { # print_steps RC: every step with its time, the failed one, the verdict
  local rc=$1
  [ -n "${current:-}" ] && timings+=("$(printf '%-44s %5s   FAILED (exit %s)' "$current" "" "$rc")")
  printf '%s\n' "${timings[@]}"
  printf '%-44s %5ss  %s\n' "total" "$(($(date +%s) - t0))" "$([ "$rc" = 0 ] && echo PASSED || echo FAILED)"
}

# --- the engine: Debian's docker.io, dockerd started by hand when no init system runs it
ensure_engine() {
  if ! command -v dockerd >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
  fi
  if ! docker info >/dev/null 2>&1; then
    mkdir -p "$work"
    setsid dockerd >"$work/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null || { tail -20 "$work/dockerd.log" >&2; return 1; }
  fi
}

# --- Compose v2 (the plugin): Ubuntu's docker-compose-v2, or Debian's docker-compose when it
# is v2 (trixie on), or on bookworm (whose docker-compose is the retired v1) trixie's package,
# whose Go binary needs only libc >= 2.34.
ensure_compose() {
  docker compose version >/dev/null 2>&1 && return 0
  apt-get update -q
  if apt-cache show docker-compose-v2 >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose-v2
  elif apt-cache policy docker-compose | grep -q 'Candidate: 2\.'; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose
  else
    local d
    d=$(mktemp -d)
    echo "deb ${DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" > "$d/sources.list"
    mkdir -p "$d/lists/partial"
    local o=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$d/lists")
    apt-get "${o[@]}" update -q
    (cd "$d" && apt-get "${o[@]}" download docker-compose)
    dpkg -i "$d"/docker-compose_*.deb
    rm -rf "$d"
  fi
  docker compose version
}

# --- engine, Compose, the base image ($BASE_IMAGE, or debootstrapped here and cached) and the
# wheelhouse for its CPython: sets `base`. The image build itself is the caller's (compose).
prepare_build() {
  step "engine (docker.io, dockerd)" ensure_engine
  step "compose v2" ensure_compose
  if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
    docker image inspect "$base" >/dev/null
  else
    base=alexnet2012-base:bookworm
    step "base image (debootstrap, cached)" bash docker/base-image.sh "$base"
  fi
  local py
  py=$(docker run --rm "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.12)
  step "wheelhouse (CPython $py)" bash docker/wheelhouse.sh "$py"
  export BASE_IMAGE=$base DOCKER_BUILDKIT=0 # the classic builder: Debian's engine has no buildx
}

# --- make_source DEST PER_CLASS TGZ: the CIFAR-10 JPEGs as an ImageFolder tree, PER_CLASS train
# images per class and a quarter as many test ones, made once (DEST/.complete).
make_source() {
  local src=$1 per_class=$2 tgz=$3
  [ -f "$src/.complete" ] && return 0
  local unpack
  unpack=$(mktemp -d "$work/unpack.XXXXXX")
  rm -rf "$src" && mkdir -p "$src"
  tar -xzf "$tgz" -C "$unpack"
  local split dir n
  for split in train test; do
    n=$per_class
    [ "$split" = test ] && n=$((per_class / 4))
    for dir in "$unpack/cifar10/$split"/*/; do
      mkdir -p "$src/$split/$(basename "$dir")"
      find "$dir" -name '*.jpg' | sort | awk -v n="$n" 'NR <= n' | xargs cp -t "$src/$split/$(basename "$dir")"
    done
  done
  rm -rf "$unpack"
  touch "$src/.complete"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
