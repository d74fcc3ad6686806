"""Several hosts: settings of a resumed run come from rank 0, the shard check is settled before the
process group, its clean pass is kept with the run, and a GPU host without a usable GPU stops.

The torchrun tests start two real gloo processes on the CPU, each with its own --out, as two
hosts that do not share a runs folder. The real two-container run is `bash docker/two-node.sh`
(root and Docker; recorded in docs/benchmarks.md, not run in CI).
"""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from shards import layout
from shards.verify import preflight
from tests.conftest import opts
from tests.test_resume import _args, _rows, _torchrun
from trainer import hosts
from trainer.cli import main as cli_main


@pytest.mark.slow
def test_resume_on_a_host_without_the_run_takes_rank_0s_settings(cifar_tiny, tmp_path):
    outs = tmp_path / "outs"
    first = _torchrun(tmp_path, outs, _args(cifar_tiny, "--lr", "0.02", epochs=1))
    assert first.returncode == 0, first.stderr
    # the shard check is settled before the process group, its wait sized and said
    assert "shards checked; waiting up to 600 s for all 2 processes" in first.stdout
    assert (outs / "rank0" / "config.json").is_file() and not (outs / "rank1" / "config.json").exists()
    # rank 1's folder holds no run: before, it stopped with "no such checkpoint"; now it takes
    # rank 0's settings (--data and --lr 0.02 among them, which it was not given)
    resumed = _torchrun(tmp_path, outs, ["--resume", "--epochs", "2", "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 1 step 0" in resumed.stdout
    rows = _rows(outs / "rank0")
    assert [r["epoch"] for r in rows] == [0, 1] and {r["lr"] for r in rows} == {0.02}
    # a setting rank 1 was given is not quietly dropped for rank 0's: it differs from the run's,
    # so --resume refuses it by name (before any rank compares settings with another)
    again = ["--resume", "--epochs", "3", "--quiet"]
    other = _torchrun(tmp_path, outs, again, ALEXTRAIN_TEST_EXTRA1="--lr 0.01")
    refusal = "--resume with other settings than the run's: lr (checkpoint 0.02, now 0.01)"
    assert other.returncode != 0 and refusal in other.stderr, other.stderr


def test_a_clean_hash_pass_is_kept_with_the_run(demo_data, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(demo_data / "shards", data)
    (data / layout.VERIFIED_JSON).unlink(missing_ok=True)
    keep = hosts.verified_record(tmp_path / "run")
    said: list[str] = []
    preflight(data, ["train", "val"], say=said.append, keep=keep)
    assert len(said) == 1 and "against their SHA-256" in said[0] and keep.is_file()
    # shards mounted read-only keep no verified.json: the record beside the run vouches alone
    (data / layout.VERIFIED_JSON).unlink()
    preflight(data, ["train", "val"], say=said.append, keep=keep)
    assert len(said) == 1
    # a shard touched since: the record no longer vouches, the next start hashes again
    tar = layout.tar_path(data, "train", 0)
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 1))
    preflight(data, ["train", "val"], say=said.append, keep=keep)
    assert len(said) == 2


def test_device_cuda_without_a_usable_gpu_stops_naming_why(demo_data, tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    result = CliRunner().invoke(
        cli_main,
        ["run", "--data", str(demo_data / "shards"), "--out", str(tmp_path / "run"), "--device", "cuda"],
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.count("\n") == 0 and "--device cuda, but torch" in line and "sees no GPU" in line
    assert "nvidia-smi" in line and "--device cpu" in line and not (tmp_path / "run").exists()


def test_plain_reads_give_the_same_batches_as_mapped_tars(demo_data):
    pytest.importorskip("nvidia.dali")
    import torch

    from pipeline.loader import TrainLoader

    def first_batch(mmap: bool) -> tuple[torch.Tensor, torch.Tensor]:
        loader = TrainLoader(
            demo_data / "shards", *opts(batch_size=16, num_threads=1, crop=32, backend="dali", mmap=mmap)
        )
        x, y = next(iter(loader.epoch(0)))
        return x.clone(), y.clone()

    mapped, plain = first_batch(True), first_batch(False)
    assert torch.equal(mapped[0], plain[0]) and torch.equal(mapped[1], plain[1])
