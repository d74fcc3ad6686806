"""One-line refusals across the commands (a second hostile pass, issue 9): malformed checkpoints
and config files, two runs on one --out, a run inside its dataset, damaged pca-stats, a damaged
feature cache, labelling flags that conflict, out-of-range seeds; nothing half-written left behind.

Each test runs the real CLI (in-process, or a subprocess where that is the point) on generated
inputs with known answers.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import alexprep, alextrain
from trainer.config import TrainConfig

SIZE = "16"


def jpeg(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 20), color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """SRC/<class>/ with one image each, one of them named with a newline."""
    src = tmp_path / "src"
    for cls, name, color in (("cat", "a.jpg", (200, 0, 0)), ("dog", "b\nrejected: forged.jpg", (0, 0, 0))):
        (src / cls).mkdir(parents=True)
        (src / cls / name).write_bytes(jpeg(color) if cls == "cat" else b"")
    return src


def test_split_names_a_one_split_tree_and_is_refused_where_src_names_its_own(class_tree, tmp_path):
    proc = alexprep("shard", class_tree, tmp_path / "out", "--split", "val", "--size", SIZE, "--quiet")
    assert "val: found 2, written 1, rejected 1" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["val"]
    both = tmp_path / "both"
    for split in ("train", "val"):
        (both / split / "cat").mkdir(parents=True)
        (both / split / "cat" / "a.jpg").write_bytes(jpeg((1, 2, 3)))
    proc = alexprep("shard", both, tmp_path / "out2", "--split", "val", check=False)
    assert proc.returncode == 2 and "names its own splits (train, val)" in proc.stderr
    assert not (tmp_path / "out2").exists()


def test_a_newline_in_a_file_name_cannot_forge_summary_lines(class_tree, tmp_path):
    proc = alexprep("shard", class_tree, tmp_path / "out", "--size", SIZE, "--quiet")
    rejected = [line for line in proc.stdout.splitlines() if line.startswith("rejected:")]
    assert rejected == ["rejected: dog/b\\nrejected: forged.jpg: empty file"]


def test_a_newline_in_an_image_name_cannot_forge_lines_of_predicts_table(demo_data, demo_run, tmp_path):
    image = next((demo_data / "images" / "val").rglob("*.jpg"))
    evil = tmp_path / "a\n  0.9999  forged"
    evil.mkdir()
    shutil.copy(image, evil / "x.jpg")
    proc = alextrain("predict", demo_run, evil / "x.jpg", "--out", tmp_path / "fig4.png", "--device", "cpu")
    assert "a\\n  0.9999  forged/x.jpg" in proc.stdout
    assert not any(line.startswith("  0.9999  forged") for line in proc.stdout.splitlines())
    # bytes that are not UTF-8 in a name: \xNN in the table and in --json, as alexprep writes
    # them (the JSON held lone surrogates, which strict parsers and UTF-8 writers refuse)
    odd = tmp_path / os.fsdecode(b"\xff\xfe name.jpg")
    shutil.copy(image, odd)
    args = ("predict", demo_run, odd, "--json-out", tmp_path / "p.json", "--out", tmp_path / "f.png")
    proc = alextrain(*args, "--device", "cpu")
    assert f"{tmp_path}/\\xff\\xfe name.jpg" in proc.stdout
    rows = json.loads((tmp_path / "p.json").read_bytes().decode("utf-8"))
    assert rows[0]["image"] == f"{tmp_path}/\\xff\\xfe name.jpg", rows[0]["image"]
    assert (tmp_path / "f.png").stat().st_size > 0  # the figure's label: matplotlib raised on it
    proc = alextrain("neighbors", demo_run, "--query", odd, "--out", tmp_path / "n.png", "--device", "cpu")
    assert f"{tmp_path}/\\xff\\xfe name.jpg" in proc.stdout and (tmp_path / "n.png").stat().st_size > 0


def labelled_files(tmp_path: Path, csv: str, *names: str) -> tuple[Path, Path]:
    """SRC holding plain-colour JPEGs under `names` (a flat folder) and l.csv holding `csv`."""
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(names):
        (src / name).write_bytes(jpeg((5 + 4 * i, 5, 5)))
    labels = tmp_path / "l.csv"
    labels.write_text(csv)
    return src, labels


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no `filename,label` rows"),
        ("filename,label\n", "no `filename,label` rows"),
        ("a,b.jpg,cat\n", "quote a name that holds a comma"),
    ],
)
def test_labels_csv_that_is_empty_or_has_a_third_column_is_refused(tmp_path, text, message):
    src, labels = labelled_files(tmp_path, text, "a,b.jpg", "a")
    proc = alexprep("shard", src, tmp_path / "out", "--labels", labels, check=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "file,class\na.jpg,cat\n",
            "l.csv:1: first row 'file,class' names no file in SRC (a header row must be exactly",
        ),
        ("filename,label\na.jpg,cat\na.jpg\n", "l.csv:3: expected a `filename,label` row"),
        ('a.jpg,cat\n\n# a comment\n"a,b.jpg",cat,x\n', "l.csv:4: expected a `filename,label` row"),
    ],
)
def test_labels_csv_with_another_header_or_a_row_of_1_or_3_fields_names_its_line(tmp_path, text, message):
    src, labels = labelled_files(tmp_path, text, "a.jpg")
    proc = alexprep("shard", src, tmp_path / "out", "--labels", labels, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_only_the_first_line_can_be_taken_for_a_header(tmp_path):
    # after a real header, a row naming no file is a row (rejected as unreadable), not a header
    src, labels = labelled_files(
        tmp_path, "filename,label\n00001,cat\na.jpg,cat\nb.jpg,dog\n", "a.jpg", "b.jpg"
    )
    proc = alexprep("shard", src, tmp_path / "out", "--labels", labels, "--size", SIZE, "--quiet")
    assert "train: found 3, written 2, rejected 1" in proc.stdout


def test_rejected_csv_rows_are_said_as_rows_not_folders(tmp_path):
    src, labels = labelled_files(tmp_path, "a.jpg,cat\nb.jpg,\nmissing.jpg,bird\n", "a.jpg", "b.jpg")
    proc = alexprep("shard", src, tmp_path / "out", "--labels", labels, "--size", SIZE, "--quiet")
    assert "train: found 3, written 1, rejected 2" in proc.stdout
    assert "not in the labels" not in proc.stdout  # b.jpg has a row (rejected): it is said once
    assert "(e.g. bird: every input with this label was rejected)" in proc.stderr, proc.stderr
    assert "folder" not in proc.stderr


def test_a_trailing_empty_cell_is_still_a_row(tmp_path):
    src, labels = labelled_files(tmp_path, "a.jpg,cat,\r\n", "a.jpg")
    alexprep("shard", src, tmp_path / "out", "--labels", labels, "--size", SIZE, "--quiet")
    assert [c["name"] for c in json.loads((tmp_path / "out" / "classes.json").read_text())] == ["cat"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 classes x (3 train + 1 val) plain-colour images, sharded at 32px, with pca-stats."""
    src = tmp_path_factory.mktemp("tiny-src")
    for split in ("train", "val"):
        for c in range(3):
            (src / split / f"c{c}").mkdir(parents=True)
            for i in range(3 if split == "train" else 1):
                (src / split / f"c{c}" / f"{i}.jpg").write_bytes(jpeg((80 * c, 20 * i, 0)))
    out = tmp_path_factory.mktemp("tiny") / "shards"
    alexprep("shard", src, out, "--size", 32, "--workers", 1, "--quiet")
    alexprep("pca-stats", out, "--workers", 1, "--quiet")
    return out


CIFAR3 = {"arch": "cifar", "num_classes": 3, "crop": 32}
RUN = TrainConfig.of(arch="cifar", crop=32).to_dict()


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2, 3], "not an alextrain checkpoint (holds a list, not a dict)"),
        ({"model_config": 5, "model": {}, "config": RUN}, "malformed model_config"),
        ({"model_config": {**CIFAR3, "colour": 1}, "model": {}, "config": RUN}, "malformed model_config"),
        (
            {"model_config": CIFAR3, "model": [1], "config": {"crop": 32}},
            "not an alextrain 0.2 checkpoint (no config with",
        ),
        ({"model_config": CIFAR3, "model": [1], "config": RUN}, "weights do not fit its architecture"),
        ({"model_config": CIFAR3, "model": {"x": 1}, "config": RUN}, "weights do not fit its architecture"),
    ],
)
def test_checkpoints_that_load_but_hold_the_wrong_things_are_one_line_errors(
    tiny_data, tmp_path, content, message
):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save(content, bad)
    proc = alextrain(
        "eval", "--data", tiny_data, "--checkpoint", bad, "--device", "cpu", "--num-threads", 1, check=False
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content", [[1], {"model_config": CIFAR3, "model": [1]}, {"model_config": [1], "model": {}}]
)
def test_init_from_a_malformed_checkpoint_is_one_line(tiny_data, tmp_path, content):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save(content, bad)
    proc = alextrain(
        "run", "--data", tiny_data, "--out", tmp_path / "run", "--arch", "cifar", "--epochs", 1,
        "--init-from", bad, "--global-batch", 4, "--loader", "reference", "--num-threads", 1, "--quiet",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "not an alextrain checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # fresh interpreters, one per refused --config
def test_config_that_is_a_device_a_fifo_or_huge_is_refused_without_reading(tiny_data, tmp_path):
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)  # reading it would block forever
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (2**20 + 1))
    for config, message in ((Path("/dev/zero"), "must be a regular file"), (fifo, "must be a regular file"),
                            (huge, "not a config file")):  # fmt: skip
        cmd = [
            sys.executable,
            "-m",
            "trainer.cli",
            "run",
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "r"),
        ]
        proc = subprocess.run([*cmd, "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_config_files_as_editors_write_them(tmp_path):
    """A key in another section was called unknown; a TOML file named .TOML or with no suffix
    was read as JSON; a UTF-8 BOM was refused (each found by a probe)."""
    from trainer.config import ConfigError, load_config_file

    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[run]\nnum_threads = 1\nlr = 0.02\n")
    with pytest.raises(
        ConfigError, match=r"in \[run\], 'lr' belongs in \[optim\], 'num_threads' belongs in \[loader\]"
    ):
        load_config_file(wrong)
    for name, text in (("UPPER.TOML", "[optim]\nlr = 0.02\n"), ("nosuffix", "lr = 0.02\n")):
        (tmp_path / name).write_text(text)
        assert load_config_file(tmp_path / name) == {"lr": 0.02}, name
    for name, text in (("bom.json", '{"lr": 0.02}'), ("bom.toml", "lr = 0.02\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert load_config_file(tmp_path / name) == {"lr": 0.02}, name
    (tmp_path / "bad").write_text("lr = = 1\n")
    with pytest.raises(ConfigError, match="bad: not a readable JSON or TOML config"):
        load_config_file(tmp_path / "bad")


def test_a_refused_setting_from_a_config_file_names_the_file(tmp_path):
    """`--schedule plateau` over a file's `schedule = "step"` and `lr_steps` said "--lr-steps
    ...; leave it out", though no flag gave it: out of the file is where it must go."""
    config = tmp_path / "c.toml"
    args = ("run", "--data", tmp_path / "none", "--out", tmp_path / "r", "--config", config)
    for text, flags, said in (
        (
            'schedule = "step"\nlr_steps = [5]\n',
            ("--schedule", "plateau"),
            "--lr-steps (lr_steps): --schedule",
        ),
        ("epochs = -1\n", (), "--epochs (epochs) = -1: must be >= 1"),
    ):
        config.write_text(text)
        proc = alextrain(*args, *flags, check=False)
        assert proc.returncode == 2 and said in proc.stderr and f"(set in {config})" in proc.stderr, (
            proc.stderr
        )
    proc = alextrain(*args, "--epochs", -1, check=False)  # a flag's own value: no file to name
    assert "--epochs (epochs) = -1: must be >= 1" in proc.stderr and "set in" not in proc.stderr


def test_tilde_in_a_config_file_and_in_flag_equals_is_the_home_folder(tiny_data, tmp_path, monkeypatch):
    """No shell expands `~` in a TOML value or in `--out=~/x`: the config does, for every path."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "shards").symlink_to(tiny_data)
    monkeypatch.setenv("HOME", str(home))
    config = tmp_path / "run.toml"
    config.write_text('[run]\ndata = "~/shards"\n[model]\narch = "cifar"\n')
    alextrain(
        "run", "--config", config, "--out=~/run", "--epochs", 1, "--global-batch", 4,
        "--loader", "reference", "--num-threads", 1, "--quiet",
    )  # fmt: skip
    saved = json.loads((home / "run" / "config.json").read_text())
    assert saved["run"]["data"] == str(home / "shards") and saved["run"]["out"] == str(home / "run")
    assert not (Path.cwd() / "~").exists()
    resumed = alextrain("run", "--out=~/run", "--resume", "--epochs", 2, "--quiet")  # its config.json found
    assert "resuming at epoch 1" in resumed.stdout
    assert len((home / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    # every other path flag and argument too (preprocess/cli.py UserPath)
    proc = alextrain("eval", "--checkpoint=~/run", "--data=~/shards", "--device", "cpu", "--num-threads", 1)
    assert "top-1" in proc.stdout, proc.stdout


@pytest.mark.parametrize("weights", [[1], {1: 2, "body.0.weight": [1]}])
def test_kernels_of_a_checkpoint_without_tensors_is_one_line(tmp_path, weights):
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"model_config": CIFAR3, "model": weights}, bad)
    proc = alextrain("kernels", bad, "--out", tmp_path / "k.png", check=False)
    assert proc.returncode == 2 and "no conv1 of shape" in proc.stderr, proc.stderr
    assert not (tmp_path / "k.png").exists()


@pytest.mark.slow  # two real training processes
def test_two_runs_on_one_out_at_once_one_is_refused_and_each_epoch_is_listed_once(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["--data", tiny_data, "--out", out, "--arch", "cifar", "--global-batch", 3]
    args += ["--loader", "reference", "--num-threads", 1, "--quiet"]
    cmd = [sys.executable, "-m", "trainer.cli", "run", *map(str, args)]
    # the first runs until stopped, so that the second meets it however slowly it starts
    first = subprocess.Popen(
        [*cmd, "--epochs", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / ".alextrain.lock").exists() or not (out / ".alextrain.lock").read_text():
            assert first.poll() is None, "the first run stopped before taking the lock"
            assert time.monotonic() < deadline, "the first run took no lock on --out"
            time.sleep(0.05)
        second = subprocess.run([*cmd, "--epochs", "2"], capture_output=True, text=True, timeout=120)
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert second.returncode == 2, second.stderr
    assert "another `alextrain run`" in second.stderr and f"pid {first.pid}" in second.stderr
    metrics = out / "metrics.jsonl"
    epochs = (
        [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
    )
    assert epochs == list(range(len(epochs)))  # each epoch once, whatever the first had reached


def test_a_refused_run_leaves_no_folder_behind(tiny_data, tmp_path):
    data = tmp_path / "data"  # never hashed: the hash pass would keep its record in --out
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("verified.json"))
    proc = alextrain(
        "run",
        "--data",
        data,
        "--out",
        tmp_path / "new",
        "--arch",
        "cifar",
        "--resume",
        "--global-batch",
        3,
        check=False,
    )
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    assert "hash" not in proc.stdout + proc.stderr  # refused before the hash pass, not after it
    assert not (tmp_path / "new").exists()
    args = ("--arch", "cifar", "--global-batch", 64)  # more than the 9 training images
    proc = alextrain("run", "--data", data, "--out", tmp_path / "fresh", *args, check=False)
    assert proc.returncode == 2 and "hashing" in proc.stdout, proc.stderr  # after the hash pass
    assert not (tmp_path / "fresh").exists(), proc.stderr
    proc = alextrain("run", "--out", tmp_path / "new", "--resume", check=False)  # settings from nowhere
    assert proc.returncode == 2 and "no such checkpoint: no run was started in" in proc.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("stats.json", b"[1, 2]", "stats.json: not readable pca-stats (TypeError"),
        ("stats.json", b'{"mean_rgb": [1, 2, 3]}', "stats.json: not readable pca-stats (KeyError"),
        ("stats.json", b"\xff\xfe{", "stats.json: not readable pca-stats (UnicodeDecodeError"),
        ("mean_image.npy", b"hi\n", "mean_image.npy: not a readable .npy"),
    ],
)
def test_damaged_pca_stats_name_the_file_and_the_repair(tiny_data, tmp_path, name, content, message):
    import shutil

    import torch

    from trainer.model import ModelConfig, build_model

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / name).write_bytes(content)
    ckpt = tmp_path / "c.pt"
    model = build_model(ModelConfig.from_dict(CIFAR3))
    torch.save({"model_config": CIFAR3, "model": model.state_dict(), "config": RUN}, ckpt)
    proc = alextrain("eval", "--data", data, "--checkpoint", ckpt, "--device", "cpu", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "re-run `alexprep pca-stats" in proc.stderr, (
        proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1


def test_summary_refuses_a_class_count_it_cannot_allocate():
    proc = alextrain("summary", "--num-classes", 99_999_999_999, check=False)
    assert proc.returncode == 2 and "--num-classes" in proc.stderr and "Traceback" not in proc.stderr


def test_seeds_out_of_range_are_one_line_errors(class_tree, tiny_data, tmp_path):
    proc = alexprep("shard", class_tree, tmp_path / "out", "--seed", -1, check=False)
    assert proc.returncode == 2 and "'--seed': -1 is not in the range" in proc.stderr, proc.stderr
    proc = alextrain("run", "--data", tiny_data, "--out", tmp_path / "r", "--seed", 2**64, check=False)
    assert proc.returncode == 2 and "--seed (seed) = 18446744073709551616: must be" in proc.stderr, (
        proc.stderr
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "r").exists()


def test_report_out_named_png_is_refused_not_overwritten_by_the_markdown(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    row = {"epoch": 0, "lr": 0.01, "train_loss": 2.0, "val_top1_err": 0.9, "val_top5_err": 0.5}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    proc = alextrain("report", run, "--out", tmp_path / "figs" / "curves.PNG", check=False)
    assert proc.returncode == 2 and "both the Markdown report and its figure" in proc.stderr, proc.stderr
    assert not (tmp_path / "figs").exists()
    alextrain("report", run, "--out", tmp_path / "figs" / "r.md")
    assert (tmp_path / "figs" / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args",
    [
        ("report", "RUN", "--out", "OUT/"),
        ("kernels", "RUN", "--out", "OUT/"),
        ("predict", "RUN", "x.jpg", "--out", "OUT/"),
        ("neighbors", "RUN", "--query", "x.jpg", "--out", "OUT/"),
        ("eval", "--data", "RUN", "--checkpoint", "RUN", "--json-out", "OUT/"),
    ],
)
def test_an_output_file_named_with_a_trailing_slash_is_refused_not_written_as_a_file(tmp_path, args):
    """pathlib drops the slash: `--out reports/` wrote a file called `reports`."""
    run = tmp_path / "run"
    run.mkdir()
    argv = [str(run) if a == "RUN" else f"{tmp_path / 'reports'}/" if a == "OUT/" else a for a in args]
    proc = alextrain(*argv, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path / 'reports'}/: names a folder (it ends in /); give a file name" in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_eval_of_one_model_given_twice_is_refused_not_averaged_as_two(tiny_data, tmp_path):
    """A run folder and its best.pt, best.pt and last.pt (often hard links of one file), or a copy:
    the same weights, which eval would average as two CNNs."""
    runs = [tmp_path / "run0", tmp_path / "run1"]
    for seed, run in enumerate(runs):
        alextrain(
            "run", "--data", tiny_data, "--out", run, "--arch", "cifar", "--epochs", 1, "--global-batch", 4,
            "--loader", "reference", "--num-threads", 1, "--seed", seed, "--quiet",
        )  # fmt: skip
    shutil.copy(runs[0] / "last.pt", tmp_path / "copy.pt")
    ev = ("eval", "--data", tiny_data, "--device", "cpu", "--num-threads", 1)
    for a, b in ((runs[0], runs[0] / "best.pt"), (runs[0] / "best.pt", runs[0] / "last.pt"),
                 (runs[0], tmp_path / "copy.pt")):  # fmt: skip
        proc = alextrain(*ev, "--checkpoint", a, "--checkpoint", b, check=False)
        why = (
            "is given twice (a run folder means its best.pt"
            if a == runs[0] and b.parent == a
            else "holds the same"
        )
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
    assert "average of 2" in alextrain(*ev, "--checkpoint", runs[0], "--checkpoint", runs[1]).stdout
    one = ("eval", "--data", tiny_data, "--checkpoint", runs[0])
    for n in (0, -3):  # 0 was taken as "not given" and replaced by the run's value
        proc = alextrain(*one, "--num-threads", n, check=False)
        assert proc.returncode == 2 and f"--num-threads (num_threads) = {n}: must be >= 1" in proc.stderr


def test_report_of_a_file_outside_any_run_names_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    proc = alextrain("report", tmp_path / "notes.txt", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "notes.txt: a file, not a run folder (nor a checkpoint in one)"
    ), proc.stderr


def test_a_damaged_feature_cache_is_computed_again_and_a_folder_in_its_place_is_one_line(tiny_data, tmp_path):
    import torch

    from trainer.model import ModelConfig, build_model

    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_dict(CIFAR3))
    torch.save({"model_config": CIFAR3, "model": model.state_dict(), "config": RUN}, run / "last.pt")
    query = tmp_path / "q.jpg"
    query.write_bytes(jpeg((80, 0, 0)))
    args = ("neighbors", run, "--data", tiny_data, "--query", query, "--device", "cpu", "--num-threads", 1)
    first = alextrain(*args).stdout
    (cache,) = run.glob("features-*.npy")
    cache.write_bytes(b"garbage")
    again = alextrain(*args)
    assert again.stdout == first and "damaged feature cache" in again.stderr
    assert cache.read_bytes()[:6] == b"\x93NUMPY"
    cache.unlink()
    cache.mkdir()
    proc = alextrain(*args, check=False)
    assert proc.returncode == 2 and "cannot write the feature cache (Is a directory)" in proc.stderr, (
        proc.stderr
    )
    assert sorted(p.name for p in run.iterdir()) == [cache.name, "fig4b.png", "last.pt"]  # no temporary left


@pytest.mark.parametrize("where", [".", "train", "val/run"])
def test_a_run_inside_the_dataset_or_a_split_is_refused(tiny_data, where):
    out = tiny_data / where
    before = sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*"))
    proc = alextrain(
        "run",
        "--data",
        tiny_data,
        "--out",
        out,
        "--arch",
        "cifar",
        "--global-batch",
        3,
        "--epochs",
        1,
        check=False,
    )
    assert proc.returncode == 2 and "is the dataset folder or one of its splits" in proc.stderr, proc.stderr
    assert sorted(p.relative_to(tiny_data) for p in tiny_data.rglob("*")) == before


def test_two_ways_of_labelling_at_once_are_refused(class_tree, tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("cat/a.jpg,cat\n")
    for extra in (["--devkit", tmp_path], ["--label-from-name"]):
        proc = alexprep("shard", class_tree, tmp_path / "out", "--labels", labels, *extra, check=False)
        assert proc.returncode == 2 and "give one way of labelling SRC" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_inputs_are_said_in_the_summary(tmp_path):
    """A class folder's notes.txt or hidden file is not an input, but the summary says it was seen."""
    src = tmp_path / "src"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        Image.new("RGB", (40, 40), (90, 90, 90)).save(src / cls / "a.jpg")
    (src / "cat" / "notes.txt").write_text("not an image")
    (src / "dog" / ".hidden.jpg").write_bytes(b"x")
    proc = alexprep("shard", src, tmp_path / "out", "--size", 16, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "2 file(s) not read" in proc.stdout and "cat/notes.txt" in proc.stdout, proc.stdout
    assert "found 2, written 2, rejected 0" in proc.stdout
