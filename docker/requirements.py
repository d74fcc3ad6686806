"""Print what the image installs: the project's dependencies with DALI's CUDA build chosen, plus
TensorBoard and the build backend (the project is installed with --no-build-isolation, so the
build needs no index). One list for docker/Dockerfile and docker/wheelhouse.sh; versions come
from constraints.txt.

Usage: python3 docker/requirements.py [DALI_PACKAGE]   (default nvidia-dali-cuda130)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirements(dali: str) -> list[str]:
    """pyproject's dependencies, DALI swapped for `dali`, + the image's extras + build requires.

    Extras: tensorboard (the service), figures (report, predict, fig1 in the container) and devkit
    (ILSVRC-2012 val with the devkit's meta.mat): a GPU host should not find one missing.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = [re.sub(r"^nvidia-dali-cuda\d+", dali, d) for d in project["project"]["dependencies"]]
    extras = project["project"]["optional-dependencies"]
    for extra in ("tensorboard", "figures", "devkit"):
        deps += extras[extra]
    return deps + project["build-system"]["requires"]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "nvidia-dali-cuda130")))
