#!/usr/bin/env bash
# Make a minimal Debian base image locally, for hosts that reach Debian's package mirror but no
# image registry (as docker/smoke.sh's machine): debootstrap -> tar -> `docker import`. It holds
# what docker/Dockerfile's first stage would otherwise install (python3 + venv, tini, useradd, the
# InfiniBand verbs userspace of rdma-core: libibverbs1, ibverbs-providers, ibverbs-utils),
# so the image builds from it without a package index.
# Usage: bash docker/base-image.sh [TAG]      (default alexnet2012-base:bookworm; cached: a
# second run with the tag present does nothing). Env: SUITE (bookworm), DEBIAN_MIRROR.
set -euo pipefail
tag=${1:-alexnet2012-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag: present (cached)"
  exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
root=$(mktemp -d /tmp/alexnet2012-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,tini,passwd,ca-certificates,libibverbs1,ibverbs-providers,ibverbs-utils \
  "$suite" "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' - "$tag"
echo "base image $tag: made from debootstrap $suite"
