"""Figure 4 (right): the neighbour search, on a run trained on the demo's drawn images."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch
from click.testing import CliRunner

from trainer import neighbors
from trainer.cli import main
from trainer.neighbors import chunked_topk


def cli(*args: object) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _sources(shards, split: str = "train") -> list[str]:
    return pq.read_table(shards / split / "manifest.parquet", columns=["source"])["source"].to_pylist()


def test_chunked_topk_equals_brute_force_with_and_without_excluded_rows():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(1000, 16)), rng.normal(size=(7, 16))
    brute = np.sqrt(((queries[:, None] - bank[None]) ** 2).sum(-1))
    nearest = np.argsort(brute, 1)
    excluded = [[int(nearest[i, 0]), int(nearest[i, 3])] if i % 2 else [] for i in range(7)]
    b = torch.from_numpy(bank).float()
    for chunk in (1000, 97, 6, 1):
        d, i = chunked_topk(
            torch.from_numpy(queries).float(), ((o, b[o : o + chunk]) for o in range(0, 1000, chunk)), 6
        )
        assert i.tolist() == nearest[:, :6].tolist(), chunk
        np.testing.assert_allclose(d.numpy(), np.take_along_axis(brute, nearest[:, :6], 1), rtol=1e-4)
        _, i = chunked_topk(
            torch.from_numpy(queries).float(),
            ((o, b[o : o + chunk]) for o in range(0, 1000, chunk)),
            6,
            excluded,
        )
        for q in range(7):
            expected = [int(j) for j in nearest[q] if j not in excluded[q]][:6]
            assert i[q].tolist() == expected, (chunk, q)


def test_neighbors_searches_train_leaves_the_query_out_and_names_each(
    demo_data, demo_run, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the figure must land in the run folder, not here
    query = demo_data / "images" / "train" / "circle" / "circle-0003.jpg"
    own = _sources(demo_data / "shards").index("train/circle/circle-0003.jpg")
    proc = cli("neighbors", demo_run, "--query", query, "--k", 4, "--num-threads", 1, "--json-out", "n.json")
    (r,) = json.loads((tmp_path / "n.json").read_text())
    assert r["split"] == "train" and r["query_class"] == "circle"
    assert r["excluded"] == [own] and own not in [n["index"] for n in r["neighbors"]]
    assert len(r["neighbors"]) == 4
    distances = [n["distance"] for n in r["neighbors"]]
    assert distances == sorted(distances) and distances[0] > 0
    sources = _sources(demo_data / "shards")
    for n in r["neighbors"]:  # class and file are the manifest's for that row
        assert n["source"] == sources[n["index"]] and n["source"].split("/")[1] == n["name"]
        assert f"{n['name']}" in proc.stdout and n["source"] in proc.stdout
    assert "its own copy (row" in proc.stdout
    assert (demo_run / "fig4b.png").is_file() and not list(tmp_path.glob("*.png"))
    # --include-self keeps it: the query and the bank see the same transform, so it comes first
    proc = cli(
        "neighbors", demo_run, "--query", query, "--k", 2, "--num-threads", 1, "--include-self", "--json"
    )
    (r,) = json.loads(proc.stdout)
    assert r["excluded"] == [] and r["neighbors"][0]["index"] == own
    assert r["neighbors"][0]["distance"] < 1e-2 * r["neighbors"][1]["distance"]
    # a --k over the split's size: all its rows, and said (val: 40 images, the query's copy left out)
    val_query = demo_data / "images" / "val" / "circle" / "circle-0000.jpg"
    proc = cli("neighbors", demo_run, "--query", val_query, "--split", "val", "--k", 64, "--num-threads", 1)
    assert "(39 of --k 64: the split holds no more)" in proc.stdout, proc.stdout


def test_fig4b_labels_the_query_and_each_neighbour_with_class_and_distance(
    demo_data, demo_run, tmp_path, monkeypatch
):
    query = demo_data / "images" / "val" / "ring" / "ring-0000.jpg"
    results, rgbs, data = neighbors.find_neighbors(
        demo_run, None, [query], k=3, num_threads=1, progress=False
    )
    captured = {}
    real_save = neighbors.save_figure

    def keep(fig, path):  # noqa: ANN001
        captured["titles"] = [ax.get_title() for ax in fig.axes]
        real_save(fig, path)

    monkeypatch.setattr(neighbors, "save_figure", keep)
    neighbors.plot_neighbors(results, rgbs, data, tmp_path / "f.png")
    assert captured["titles"][0] == "query\nring"
    for title, n in zip(captured["titles"][1:], results[0]["neighbors"], strict=True):
        assert title == f"{n['name']}\n{n['distance']:.1f}"
    assert (tmp_path / "f.png").stat().st_size > 0
