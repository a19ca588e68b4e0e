"""On-disk stores: conversion in chunks, bounded reads, and the same results as in-memory data."""
import json

import numpy as np
import pandas as pd
import pytest

from arcmil.cli import main
from arcmil.data import load_bags, save_bags
from arcmil.data.packed import WindowFile
from arcmil.data.store import convert_to_store
from arcmil.demo import make_demo_bags
from arcmil.errors import DataError

FAST = ["--epochs", "2", "--n-bootstrap", "20", "--no-progress", "--batch-size", "8"]


@pytest.fixture(scope="module")
def ragged_csv(tmp_path_factory):
    bags = make_demo_bags(n_bags=90, seed=5)
    keep = np.random.default_rng(1).integers(2, 11, size=90)
    bags = bags.with_bags([b[:k] for b, k in zip(bags.bags, keep)])
    bags.instance_labels = [np.arange(k) % 2 for k in keep]
    return save_bags(bags, tmp_path_factory.mktemp("data") / "bags.csv")


@pytest.mark.parametrize("source", ["bags.csv", "bags.npz"])
def test_store_round_trip_equals_the_input(ragged_csv, tmp_path, source):
    path = ragged_csv if source == "bags.csv" else save_bags(load_bags(ragged_csv), tmp_path / source)
    meta = convert_to_store(path, tmp_path / "store", dtype="float32", chunk_windows=37)  # many small chunks
    memory, store = load_bags(path), load_bags(tmp_path / "store")
    assert isinstance(store.bags.windows, WindowFile) and meta["n_bags"] == 90
    assert list(store.bag_ids) == list(memory.bag_ids) and (store.labels == memory.labels).all()
    for a, b, ia, ib in zip(memory.bags, store.bags, memory.instance_labels, store.instance_labels):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ia, ib)


def test_float16_store_halves_the_size_and_stays_close(ragged_csv, tmp_path):
    convert_to_store(ragged_csv, tmp_path / "half", dtype="float16")
    convert_to_store(ragged_csv, tmp_path / "full", dtype="float32")
    assert (tmp_path / "half" / "windows.bin").stat().st_size * 2 == (tmp_path / "full" / "windows.bin").stat().st_size
    half, full = load_bags(tmp_path / "half"), load_bags(tmp_path / "full")
    np.testing.assert_allclose(half.bags[3], full.bags[3], rtol=1e-3, atol=1e-3)


def test_train_and_predict_from_a_store_equal_in_memory_results(ragged_csv, tmp_path, capsys):
    assert main(["convert", "--data", str(ragged_csv), "--out", str(tmp_path / "store"), "--dtype", "float32",
                 "--chunk-windows", "50"]) == 0
    for name in ("csv", "store"):
        data = ragged_csv if name == "csv" else tmp_path / "store"
        assert main(["train", "--data", str(data), "--out", str(tmp_path / f"run_{name}"), *FAST]) == 0
        checkpoint = tmp_path / f"run_{name}" / "best_attention_mil.pth"
        assert main(["predict", "--checkpoint", str(checkpoint), "--data", str(data),
                     "--out", str(tmp_path / f"pred_{name}.csv")]) == 0
    results = [json.loads((tmp_path / f"run_{n}" / "stage3_attention_mil_results.json").read_text())
               for n in ("csv", "store")]
    assert [h["val_loss"] for h in results[0]["history"]] == pytest.approx(
        [h["val_loss"] for h in results[1]["history"]], rel=1e-6)
    assert results[0]["test"]["roc_auc"] == results[1]["test"]["roc_auc"]
    a, b = (pd.read_csv(tmp_path / f"pred_{n}.csv") for n in ("csv", "store"))
    assert list(a["bag_id"]) == list(b["bag_id"])
    np.testing.assert_allclose(a["prob"], b["prob"], rtol=1e-6)


def test_bad_inputs_leave_no_store(tmp_path, capsys):
    rows = pd.DataFrame({"bag_id": ["a", "a", "b", "b", "a"], "label": [0, 0, 1, 1, 0], "emb_0": [1.0, 2, 3, 4, 5],
                         "emb_1": [0.0, 1, 2, 3, 4]})
    rows.to_csv(tmp_path / "scattered.csv", index=False)
    with pytest.raises(DataError, match="bag 'a'.*not contiguous"):
        convert_to_store(tmp_path / "scattered.csv", tmp_path / "s1", chunk_windows=2)
    rows.assign(bag_id=["a", "a", "b", "b", "b"], label=[0, 0, 1, 1, 1], emb_0=[1.0, 2, 7e4, 4, 5]).to_csv(tmp_path / "big.csv", index=False)
    assert main(["convert", "--data", str(tmp_path / "big.csv"), "--out", str(tmp_path / "s2")]) == 2
    assert "bag 'b': field 'embeddings': a value exceeds the float16 range" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.csv", "scattered.csv"], "nothing partial is left"
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "keep.txt").write_text("mine")
    assert main(["convert", "--data", str(tmp_path / "big.csv"), "--out", str(tmp_path / "s3"),
                 "--dtype", "float32"]) == 2
    assert (tmp_path / "s3" / "keep.txt").read_text() == "mine"


def test_a_truncated_store_is_refused(ragged_csv, tmp_path):
    convert_to_store(ragged_csv, tmp_path / "store")
    windows = tmp_path / "store" / "windows.bin"
    windows.write_bytes(windows.read_bytes()[:-10])
    with pytest.raises(DataError, match="field 'windows'.*truncated"):
        load_bags(tmp_path / "store")
