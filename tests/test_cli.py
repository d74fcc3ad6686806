"""The alextrain CLI as a user meets it: one meaning per flag, run folders as checkpoints, fast
--help, outputs checked before any work, tolerant metrics, the figures' names and cache.

Everything runs for real on a tiny generated dataset (3 classes of 32px JPEGs, sharded by
`alexprep`, one short `alextrain run`), so the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import alexprep, alextrain, doubled_logits
from trainer.cli import main
from trainer.cli_common import HELP

CLASSES = ("cat", "dog", "n09999999")  # the last is a bare wnid in no table: no human-readable name known


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """3 classes x (12 train + 4 val) images of 40px, sharded at 32px, with pca-stats."""
    src = tmp_path_factory.mktemp("tiny-src")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, name in enumerate(CLASSES):
            (src / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) // 4 + np.uint8(60 * c + 40)
                cv2.imwrite(str(src / split / name / f"{i:04d}.jpg"), img)
    out = tmp_path_factory.mktemp("tiny") / "shards"
    alexprep("shard", src, out, "--size", 32, "--shard-size", 16, "--workers", 1, "--quiet")
    alexprep("pca-stats", out, "--quiet")
    (out / "src").symlink_to(src)  # so tests can find the source images next to the shards
    return out


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    cli(
        "run", "--data", tiny, "--out", run, "--arch", "cifar", "--crop", 32, "--epochs", 1,
        "--global-batch", 8, "--num-threads", 1, "--quiet",
    )  # fmt: skip
    return run


def cli(*args: object, check: bool = True) -> click.testing.Result:
    """The alextrain CLI in this process (click's runner): the same code as the console script,
    without paying torch's import per call. Start-up, `--help`, warnings and one-line errors as a
    real process shows them are tested with `alextrain(...)` subprocesses."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if check and result.exit_code != 0:
        raise AssertionError(
            f"alextrain {args} failed ({result.exit_code}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def _fails_cleanly(proc: subprocess.CompletedProcess | click.testing.Result, message: str) -> None:
    code = proc.returncode if isinstance(proc, subprocess.CompletedProcess) else proc.exit_code
    assert code == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---- one meaning per flag, every --help alike -------------------------------------------------


def _help_records(command: click.Command) -> dict[str, tuple[str, str]]:
    ctx = click.Context(command)
    return {p.name: p.get_help_record(ctx) for p in command.params if isinstance(p, click.Option)}


def test_shared_options_read_the_same_in_every_command():
    from trainer.config import FIELDS

    shared = {"data": HELP["data"], "batch_size": "Images per batch.", "as_json": HELP["json"]}
    shared |= {"json_out": HELP["json_out"]}
    shared |= {k: FIELDS[k].metadata["help"] for k in ("device", "num_threads")}  # = run's own
    seen = {k: 0 for k in shared}
    for name, command in main.commands.items():
        records = _help_records(command)
        for param, (flags, text) in records.items():
            assert "[default: ]" not in text, (name, flags)
            if name == "fig1":  # its own options (the model engineer's), not the shared ones
                continue
            if param in shared:
                seen[param] += 1
                assert text.startswith(shared[param]), (name, flags, text)
        if "as_json" in records:
            assert records["as_json"][0] == "--json" and "json_out" in records, name
            assert records["json_out"][0].startswith("--json-out"), name
    assert all(n >= 2 for n in seen.values()), seen  # each really is shared
    json_flag = [p for p in main.commands["eval"].params if p.name == "as_json"][0]
    assert json_flag.is_flag  # --json prints; it never takes a path


def test_eval_takes_no_positional_list():
    assert not [p for p in main.commands["eval"].params if isinstance(p, click.Argument)]
    proc = alextrain("eval", "--data", "x", "--checkpoint", "a.pt", "b.pt", check=False)
    assert proc.returncode == 2 and "unexpected extra argument" in proc.stderr.lower()


def test_help_is_fast_and_imports_no_torch():
    import resource

    heavy = "{'torch', 'nvidia.dali', 'webdataset', 'cv2'}"
    code = f"import sys, trainer.cli; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "--help"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0 and "bench-loader" in proc.stdout
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, cpu  # ~0.2 s; importing torch alone costs more than 1 s (CPU time: load-proof)


@pytest.mark.slow  # a second pytest collecting everything
def test_plain_pytest_collects(tmp_path):
    """`pytest` (the console script, not `python -m pytest`) finds the packages: pythonpath = ["."]."""
    root = Path(__file__).resolve().parents[1]
    pytest_bin = Path(sys.executable).with_name("pytest")
    if not pytest_bin.is_file():
        pytest.skip("no pytest console script beside this python")
    proc = subprocess.run(
        [str(pytest_bin), "--collect-only", "-q", "tests/test_cli.py", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_plain_pytest_collects" in proc.stdout


# ---- shared pieces: classes.json, metrics.jsonl, the val split ---------------------------------


def test_read_metrics_tolerates_torn_garbage_and_repeated_lines(tmp_path):
    from trainer.metrics import read_metrics

    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    rows = [{"epoch": 0, "lr": 0.01}, {"epoch": 1, "lr": 0.01}, {"epoch": 1, "lr": 0.001}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + "not json\n[1, 2]\n" + '{"epoch": "2"}\n\n{"epoch": 2, "lr": 0.0')
    with pytest.warns(UserWarning, match=r"skipped 4 unreadable line\(s\): 4, 5, 6, 8"):
        got = read_metrics(path)
    assert got == [{"epoch": 0, "lr": 0.01}, {"epoch": 1, "lr": 0.001}]  # the last row of an epoch wins


def test_load_classes_and_val_split(tmp_path, tiny):
    from shards.reader import DatasetError, default_val_split, load_classes

    classes = load_classes(tiny)
    assert [c["name"] for c in classes] == list(CLASSES) and [c["index"] for c in classes] == [0, 1, 2]
    assert default_val_split({"splits": {"train": 1, "test": 1, "val": 1}}) == "val"
    assert default_val_split({"splits": {"train": 1, "test": 1}}) == "test"
    assert default_val_split({"splits": {"train": 1}}) is None
    with pytest.raises(DatasetError, match="no classes.json"):
        load_classes(tmp_path)
    for text, why in (
        ("{", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ("[1]", "with an index"),
    ):
        (tmp_path / "classes.json").write_text(text)
        with pytest.raises(DatasetError, match=why):
            load_classes(tmp_path)
    (tmp_path / "classes.json").write_text('[{"index": 1}]')
    with pytest.raises(DatasetError, match="not 0..0 in order"):
        load_classes(tmp_path)


# ---- run folders, outputs checked before any work ----------------------------------------------


def _conv1_checkpoint(path: Path, kernels: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"body.0.weight": torch.randn(kernels, 3, 5, 5)}}, path)
    return path


def test_kernels_takes_a_run_folder_best_before_last(tmp_path):
    run = tmp_path / "run"
    _conv1_checkpoint(run / "last.pt", 16)
    proc = cli("kernels", run, "--out", tmp_path / "a" / "b" / "k.png")  # parents created
    assert proc.stdout.startswith("16 kernels") and (tmp_path / "a" / "b" / "k.png").is_file()
    _conv1_checkpoint(run / "best.pt", 32)
    assert cli("kernels", run, "--out", tmp_path / "k.png").stdout.startswith("32 kernels")
    _fails_cleanly(cli("kernels", tmp_path / "empty-nothing", check=False), "no such checkpoint")
    (tmp_path / "empty").mkdir()
    _fails_cleanly(cli("kernels", tmp_path / "empty", check=False), "no best.pt or last.pt")


def test_outputs_are_checked_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    missing = tmp_path / "no-such.pt"  # the work would fail on this; the output check comes first
    cases = [
        (["kernels", missing, "--out", blocker / "k.png"], f"{blocker} is a file, not a folder"),
        (["kernels", missing, "--out", tmp_path / "k.txt"], "unknown image type '.txt'"),
        (["predict", missing, "img.jpg", "--out", blocker / "p.png"], f"{blocker} is a file, not a folder"),
        (["predict", missing, "img.jpg", "--out", tmp_path], "is a folder"),
        (
            ["neighbors", missing, "--query", "q.jpg", "--json-out", blocker / "n.json"],
            f"{blocker} is a file, not a folder",
        ),
        (
            ["eval", "--data", tmp_path, "--checkpoint", missing, "--json-out", blocker / "e.json"],
            "is a file, not a folder",
        ),
        (["summary", "--json-out", blocker / "s.json"], f"{blocker} is a file, not a folder"),
    ]
    for args, message in cases:
        _fails_cleanly(alextrain(*args, check=False), message)
    assert blocker.read_text() == "x"


def test_report_on_partial_and_garbage_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"epoch": 0, "train_loss": 2.1, "train_top1_err": 0.8, "lr": 0.01, "val_top1_err": 0.7},
        {"epoch": 1, "train_loss": 1.9, "lr": 0.01, "val_top1_err": 0.6, "val_top5_err": 0.2},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 2, "tra')
    proc = alextrain("report", run)
    assert "(2 epochs)" in proc.stdout
    assert (
        proc.stderr.strip() == f"alextrain: warning: {run / 'metrics.jsonl'}: skipped 1 unreadable line(s): 3"
    )
    text = (run / "report.md").read_text()
    assert "| this run (epoch 1, numbered from 0; centre crop) | 60.0 | 20.0 |" in text
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')  # no metric at all: n/a, not a crash
    cli("report", run)
    text = (run / "report.md").read_text()
    assert "| this run (epoch 0, numbered from 0; centre crop) | n/a | n/a |" in text
    (run / "metrics.jsonl").write_bytes(b"\x00\xff garbage\n")
    _fails_cleanly(cli("report", run, check=False), "no readable epochs")


# ---- the commands on a real (tiny) run ---------------------------------------------------------


def test_eval_json_flag_prints_and_json_out_writes(tiny, tiny_run, tmp_path):
    proc = cli("eval", "--data", tiny, "--checkpoint", tiny_run, "--json", "--json-out", tmp_path / "e.json")
    printed = json.loads(proc.stdout)  # stdout is pure JSON with --json
    assert printed == json.loads((tmp_path / "e.json").read_text())
    assert printed["split"] == "val" and printed["rows"][0]["samples"] == 12
    assert printed["rows"][0]["model"] == str(tiny_run / "best.pt")  # the run folder's best
    twin = doubled_logits(tiny_run / "last.pt", tmp_path / "twin.pt")
    table = cli("eval", "--data", tiny, "--checkpoint", tiny_run, "--checkpoint", twin)
    assert "average of 2" in table.stdout and not table.stdout.startswith("{")


def test_bench_loader_on_32px_shards_takes_the_crop_from_the_data(tiny):
    proc = cli(
        "bench-loader", "--data", tiny, "--batches", 3, "--batch-size", 4, "--num-threads", 1, "--json"
    )
    result = json.loads(proc.stdout)
    assert result["crop"] == 32 and result["device"] == "cpu" and result["batches"] == 3
    assert result["loader"] == "dali" and result["img_per_s"] > 0  # auto: DALI, installed here
    one_step = cli(
        "bench-loader", "--data", tiny, "--batches", 2, "--batch-size", 36, "--num-threads", 1, "--json"
    )
    assert json.loads(one_step.stdout)["batches"] == 2  # one-step epochs: timed across epochs, no hang
    _fails_cleanly(
        cli("bench-loader", "--data", tiny, "--batch-size", 10_000, check=False), "less than one batch"
    )


def test_predict_names_truth_and_figure(tiny, tiny_run, tmp_path):
    from PIL import Image

    src = tiny / "src" / "val"
    images = [src / "cat" / "0000.jpg", src / "n09999999" / "0001.jpg"]
    named = tmp_path / "n09999999_tench.jpg"  # ImageNet's naming gives the wnid class a name
    named.write_bytes((src / "n09999999" / "0002.jpg").read_bytes())
    proc = cli("predict", tiny_run, *images, "--json-out", tmp_path / "p.json", "--out", tmp_path / "p.png")
    result = json.loads((tmp_path / "p.json").read_text())
    assert [r["true_name"] for r in result] == ["cat", "n09999999"]  # truth from the class folder
    assert all(len(r["top"]) == 3 and abs(sum(t["prob"] for t in r["top"]) - 1) < 1e-4 for r in result)
    assert "no human-readable name for 1 class(es)" in proc.stderr and "class_names.json" in proc.stderr
    assert Image.open(tmp_path / "p.png").size == (480, 420)
    proc = cli("predict", tiny_run, named, "--json")
    (r,) = json.loads(proc.stdout)
    assert r["true_name"] == "tench" and "no human-readable" not in proc.stderr
    (tiny / "class_names.json").write_text(json.dumps({"n09999999": "tench, Tinca tinca"}))
    try:
        (r,) = json.loads(cli("predict", tiny_run, images[1], "--json").stdout)
        (tiny / "class_names.json").write_text('["not", "an object"]')
        _fails_cleanly(cli("predict", tiny_run, images[1], check=False), "expected a JSON dict")
    finally:
        (tiny / "class_names.json").unlink()
    assert r["true_name"] == "tench, Tinca tinca"
    if not torch.cuda.is_available():
        proc = cli("predict", tiny_run, images[0], "--device", "cuda", check=False)
        _fails_cleanly(proc, "no CUDA GPU")


def test_predict_applies_alexpreps_image_limits(tiny, tiny_run, tmp_path):
    # a header claiming 3.6 gigapixels is refused before decoding, naming the flag predict has
    from tests.test_hostile_input import png_header

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(60000, 60000))
    proc = cli("predict", tiny_run, bomb, check=False)
    _fails_cleanly(proc, "over the --max-pixels limit 100,000,000")
    assert "bomb.png" in proc.stderr
    image = tiny / "src" / "val" / "cat" / "0000.jpg"
    _fails_cleanly(
        cli("predict", tiny_run, image, "--max-pixels", 100, check=False), "over the --max-pixels limit 100"
    )
    _fails_cleanly(
        cli("predict", tiny_run, image, "--max-bytes", 10, check=False), "over the --max-bytes limit 10"
    )
    assert json.loads(cli("predict", tiny_run, image, "--json", "--max-pixels", 10**6).stdout)[0]["top"]
    for command in ("predict", "neighbors"):
        help_text = cli(command, "--help").stdout
        assert "--max-pixels" in help_text and "--max-bytes" in help_text


def test_plot_predictions_scales_bars_to_the_data(tmp_path):
    from trainer.figures import plot_predictions

    rgb = np.zeros((32, 32, 3), np.uint8)
    top = [
        {"index": i, "name": f"class {i}", "prob": p} for i, p in enumerate((0.03, 0.02, 0.01, 0.005, 0.001))
    ]
    r = {
        "image": "x.jpg",
        "top": top,
        "true_index": 7,
        "true_name": "seven",
        "true_prob": 0.0004,
        "_rgb": rgb,
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    original = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["fig"] = fig
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        plot_predictions([r], tmp_path / "f.png")
    finally:
        plt.Figure.savefig = original
    bars = captured["fig"].axes[1]
    assert 0.03 < bars.get_xlim()[1] < 0.05  # scaled to the largest bar, not 0..1
    labels = [t.get_text().strip() for t in bars.texts]
    assert labels == ["1.0e-03", "5.0e-03", "0.01", "0.02", "0.03"]  # each bar says its probability
    assert "true: p=0.0004" in bars.get_xlabel()  # the true class, not in the top 5, still shown
    assert (tmp_path / "f.png").stat().st_size > 0 and not list(tmp_path.glob(".*.tmp"))


def test_neighbors_cache_follows_the_checkpoints_content(tiny, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    query = tiny / "src" / "train" / "dog" / "0003.jpg"
    args = ("neighbors", run, "--query", query, "--k", 3, "--num-threads", 1, "--include-self", "--json")
    first = [n["distance"] for n in json.loads(cli(*args).stdout)[0]["neighbors"]]
    caches = list(run.glob("features-best-train-*.npy"))
    assert len(caches) == 1 and first[0] < 1e-2 * first[1]  # itself first
    cli(*args)
    assert list(run.glob("features-best-train-*.npy")) == caches  # same weights: reused
    state = torch.load(run / "best.pt", weights_only=True)
    state["model"] = {k: v * 2 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, run / "best.pt")  # a later, better epoch overwrote best.pt
    second = [n["distance"] for n in json.loads(cli(*args).stdout)[0]["neighbors"]]
    now = list(run.glob("features-best-train-*.npy"))
    assert len(now) == 1 and now != caches  # re-extracted, the stale cache removed
    assert second != first


# ---- packaging: optional extras say what to install --------------------------------------------


@pytest.mark.slow  # fresh interpreters
def test_missing_extras_are_one_line_errors(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 2.0, "lr": 0.01}\n')
    code = "import sys; sys.modules['matplotlib'] = None; from trainer.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "report", str(run)], capture_output=True, text=True)
    _fails_cleanly(proc, "matplotlib is not installed; pip install 'alexnet2012[figures]'")
    assert not (run / "report.md").exists()

    from preprocess.sources import SourceError, _devkit_val_labels

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(SourceError, match=r"needs scipy: pip install 'alexnet2012\[devkit\]'"):
        _devkit_val_labels(tmp_path)


def test_packaging_metadata():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "setuptools>=77" in project["build-system"]["requires"]  # the SPDX license string needs 77
    deps = project["project"]["dependencies"]
    assert any(d.startswith("pillow") for d in deps)  # imported at run time by trainer/figures.py
    extras = project["project"]["optional-dependencies"]
    assert extras["figures"] == ["matplotlib>=3.7"] and extras["devkit"] == ["scipy>=1.10"]
    assert set(extras["figures"] + extras["devkit"]) <= set(extras["dev"])  # CI installs [dev]


def test_feature_loader_follows_the_models_device(tiny, tiny_run, tmp_path, monkeypatch):
    """Issue 11.8: on a GPU host the loader went to CUDA while the model stayed on the CPU.

    Here the host claims a GPU (as a careless `torch.cuda.is_available()` check would see it);
    the model is on the CPU, so the features must be extracted on the CPU, and work.
    """
    from trainer.features import extract_features
    from trainer.inference import load_model, pick_device

    model, state = load_model(tiny_run, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("cpu") == torch.device("cpu")
    cfg = state["config"]
    cache = tmp_path / "features-x-val-0123456789abcdef.npy"
    bank = extract_features(model, tiny, "val", cfg["crop"], cfg["normalization"], cache, 8, False, 1)
    assert bank.shape[0] == 12 and np.isfinite(bank).all() and cache.is_file()


def test_predict_and_neighbors_use_the_runs_normalization(tiny, tiny_run, tmp_path):
    """A run trained with --normalization channel must see its own input transform, not the mean image."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("features-*"))
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        assert state["config"]["loader"]["normalization"] == "mean-image"
        state["config"]["loader"]["normalization"] = "channel"
        torch.save(state, run / name)
    image = tiny / "src" / "val" / "dog" / "0000.jpg"
    probs = [
        [t["prob"] for t in json.loads(cli("predict", r, image, "--json").stdout)[0]["top"]]
        for r in (tiny_run, run)
    ]
    assert probs[0] != pytest.approx(probs[1], abs=1e-6)
    # the query and the bank go through the same transform: the image still finds itself
    args = ("--query", tiny / "src" / "train" / "cat" / "0001.jpg", "--k", 2, "--num-threads", 1)
    (r,) = json.loads(cli("neighbors", run, *args, "--include-self", "--json").stdout)
    assert r["neighbors"][0]["distance"] < 1e-2 * r["neighbors"][1]["distance"]
