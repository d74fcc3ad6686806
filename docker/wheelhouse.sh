#!/usr/bin/env bash
# Download every wheel the image installs into docker/wheels/, pinned by constraints.txt, for
# Linux x86_64 and the base image's CPython. docker/Dockerfile then installs from there alone
# (--no-index): the build needs no package registry, which also serves air-gapped GPU clusters
# (make the wheelhouse on a connected host, carry the repository over, build there).
# Usage: bash docker/wheelhouse.sh [PYTHON_VERSION]   default 3.12 (the CUDA image: Ubuntu 24.04)
# Env: DALI_PACKAGE (nvidia-dali-cuda130). pip's own configuration applies: a local torch wheel
# found through find-links (e.g. 2.13.0+cpu) is preferred to PyPI's CUDA build of 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
dali=${DALI_PACKAGE:-nvidia-dali-cuda130}
platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
req=$(mktemp)
trap 'rm -f "$req"' EXIT
python3 docker/requirements.py "$dali" > "$req"
python3 -m pip download --quiet --disable-pip-version-check --dest docker/wheels \
  --only-binary=:all: --implementation cp --python-version "$py" "${platforms[@]}" \
  -c constraints.txt -r "$req"
echo "docker/wheels: $(find docker/wheels -name '*.whl' | wc -l) wheels, $(du -sh docker/wheels | cut -f1), CPython $py, $dali"
