"""Malformed input, tried for real through the command line: one line naming file, bag and field,
exit code 2, no traceback, and nothing written."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags

RNG = np.random.default_rng(0)
FAST = ["--epochs", "1", "--n-bootstrap", "0", "--no-progress"]


def dense(n=40, windows=4, dim=6):
    labels = np.arange(n) % 2
    return {"embeddings": RNG.standard_normal((n, windows, dim)).astype(np.float32), "labels": labels}


def npz(tmp, **arrays):
    np.savez(tmp / "bad.npz", **{**dense(), **arrays})
    return tmp / "bad.npz"


def with_window(value):
    def build(tmp):
        arrays = dense()
        arrays["embeddings"][7, 2, 3] = value
        return npz(tmp, **arrays)
    return build


def table(tmp, suffix=".csv", **changes):
    bags = make_demo_bags(n_bags=40, seed=1)
    bags.instance_labels = None
    frame = pd.read_csv(save_bags(bags, tmp / "ok.csv"))
    (tmp / "ok.csv").unlink()
    for column, change in changes.items():
        frame = change(frame) if column == "frame" else frame.assign(**{column: change(frame[column])})
    path = tmp / f"bad{suffix}"
    frame.to_parquet(path) if suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


def truncated(tmp):
    good = npz(tmp)
    good.write_bytes(good.read_bytes()[:200])
    return good


def split_of(values):
    def build(tmp):
        return npz(tmp, split=np.array(values))
    return build


CASES = {
    "truncated npz": (truncated, "bad.npz"),
    "empty file": (lambda t: (t / "e.npz").write_bytes(b"") and t / "e.npz" or t / "e.npz", "file is empty"),
    "a directory": (lambda t: (t / "d").mkdir() or t / "d", "not an arcmil store"),
    "missing path": (lambda t: t / "nowhere.npz", "file not found"),
    "NaN in one window": (with_window(np.nan), "bag '7': field 'embeddings': non-finite value in window 2"),
    "Inf in one window": (with_window(np.inf), "bag '7': field 'embeddings': non-finite value in window 2"),
    "empty bag": (lambda t: npz(t, mask=np.arange(40)[:, None] != np.full((1, 4), 5)), "bag '5': field 'embeddings': empty bag"),
    "mixed D in a .pt list": (lambda t: torch.save({"embeddings": [torch.randn(3, 6)] * 20 + [torch.randn(3, 5)] * 20,
                                                     "labels": torch.arange(40) % 2}, t / "m.pt") or t / "m.pt",
                              "bag '20': field 'embeddings': embedding dimension 5 differs from 6"),
    "label 0.5": (lambda t: npz(t, labels=np.r_[np.arange(39) % 2, 0.5]),
                  "bag '39': field 'labels': label 0.5 is not 0/1 or a class id"),
    "a class with no training bags": (lambda t: npz(t, labels=np.r_[np.arange(38) % 2, 2, 2],
                                                    split=np.array(["train"] * 30 + ["val"] * 5 + ["test"] * 5)),
                                      "field 'split': split 'train' has no bags of class '2'"),
    "a label matrix holding 2": (lambda t: npz(t, labels=np.c_[np.arange(40) % 2, np.r_[np.zeros(39, int), 2]]),
                                 "bag '39': field 'labels': label matrix value 2 in column 1 is not 0 or 1"),
    "an empty class name in a CSV": (lambda t: table(t, label=lambda c: c.map({0: "letter", 1: ""})),
                                     "field 'labels': empty label"),
    "a label name holding the separator": (lambda t: npz(t, labels=np.c_[np.arange(40) % 2, np.arange(40) // 20],
                                                         label_names=np.array(["a|b", "c"])),
                                           "field 'label_names': label names must be non-empty and free of '|'"),
    "duplicate bag ids": (lambda t: npz(t, bag_ids=np.array(["a"] * 2 + [str(i) for i in range(38)])),
                          "bag 'a': field 'bag_ids': duplicate bag id"),
    "unknown split name": (split_of(["train"] * 20 + ["dev"] + ["val"] * 9 + ["test"] * 10),
                           "bag '20': field 'split': unknown split 'dev'"),
    "a split with one class": (split_of(["train"] * 30 + ["val", "test", "val"] + ["test"] * 7),
                               "field 'split': split 'val' holds only class 0"),
    "a split with no bags": (split_of(["train"] * 30 + ["test"] * 10), "field 'split': split 'val' has no bags"),
    "no positive bag in train": (lambda t: npz(t, labels=np.r_[np.zeros(30, int), np.arange(10) % 2],
                                             split=np.array(["train"] * 30 + ["val"] * 4 + ["test"] * 6)),
                                 "split 'train' holds only class 0"),
    "CSV missing an emb_ column": (lambda t: table(t, frame=lambda f: f.drop(columns="emb_3")),
                                   "field 'emb_3': embedding column emb_3 is missing"),
    "CSV without bag_id": (lambda t: table(t, frame=lambda f: f.drop(columns="bag_id")),
                           "field 'bag_id': missing required column"),
    "parquet with text embeddings": (lambda t: table(t, ".parquet", emb_1=lambda c: c.astype(str)),
                                     "field 'emb_1': expected numbers"),
    "npz without embeddings": (lambda t: np.savez(t / "k.npz", labels=np.zeros(3)) or t / "k.npz",
                               "field 'embeddings': missing required key"),
    "labels of the wrong length": (lambda t: npz(t, labels=np.zeros(39, int)), "field 'labels': 39 labels for 40 bags"),
    "unsupported suffix": (lambda t: (t / "bags.txt").write_text("x") and t / "bags.txt", "unsupported suffix"),
    "truncated store": (lambda t: _truncated_store(t), "field 'windows'"),
}


def _truncated_store(tmp):
    from arcmil.data.store import convert_to_store

    convert_to_store(save_bags(make_demo_bags(n_bags=40), tmp / "s.npz"), tmp / "store")
    windows = tmp / "store" / "windows.bin"
    windows.write_bytes(windows.read_bytes()[:-2])
    return tmp / "store"


@pytest.mark.parametrize("name", CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(name, tmp_path, capsys):
    build, expected = CASES[name]
    data = build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("arcmil: error: "), err
    assert expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing may be written"


def test_model_and_checkpoint_mismatches(tmp_path, capsys):
    bags = make_demo_bags(n_bags=60, seed=3)
    data = save_bags(bags, tmp_path / "bags.npz")
    longer = bags.with_bags([np.tile(b, (3, 1)) for b in bags.bags])
    longer.instance_labels = None
    long_data = save_bags(longer, tmp_path / "long.npz")
    args = ["--model", "transformer_mil", "--pos-enc", "learned", "--max-len", "16"]
    assert main(["train", "--data", str(long_data), *args, "--out", str(tmp_path / "r1"), *FAST]) == 2
    assert "exceed the learned positional table (max_len 16)" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *FAST]) == 0
    other = save_bags(make_demo_bags(n_bags=20, dim=8), tmp_path / "d8.npz")
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "best_attention_mil.pth"), "--data", str(other),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert "embedding dimension 8 does not match the checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "r1").exists()


def test_no_traceback_unless_debug(tmp_path):
    bad = npz(tmp_path, labels=np.r_[np.arange(39) % 2, 2])
    for debug, shows in (([], False), (["--debug"], True)):
        proc = subprocess.run([sys.executable, "-m", "arcmil", *debug, "train", "--data", str(bad)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and ("Traceback" in proc.stderr) == shows, proc.stderr


@pytest.mark.parametrize("flags,message", [
    (["--patience", "0"], "patience must be at least 1, got 0 (to train every epoch"),
    (["--patience", "-2"], "patience must be at least 1, got -2"),
    (["--model", "transmil_nystrom", "--attention", "full"], "transmil_nystrom is defined by attention='nystrom'"),
    (["--n-bootstrap", "-1"], "n_bootstrap must be 0 or more, got -1"),
    (["cv", "--val-fraction", "1.5"], "val_fraction must be between 0 and 1"),
    (["compare", "--val-fraction", "0"], "val_fraction must be between 0 and 1"),
    (["cv", "--folds", "1"], "folds must be at least 2, got 1"),
    (["--compile-mode", "reduce-overhead"], "compile_mode 'reduce-overhead' applies to a compiled model: add --compile"),
    (["train", "--lr", "1e30"], "training diverged in epoch 1"),
])
def test_bad_settings_exit_2_with_one_line_and_write_nothing(flags, message, tmp_path, capsys):
    data = save_bags(make_demo_bags(n_bags=40, seed=1), tmp_path / "data.npz")
    command, flags = (flags[0], flags[1:]) if flags[0] in ("train", "cv", "compare") else ("train", flags)
    assert main([command, "--data", str(data), "--out", str(tmp_path / "run"), *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    if "diverged" in message:  # found while training: the run directory says so, and holds no results
        assert json.loads((tmp_path / "run" / "run_state.json").read_text())["status"] == "failed"
        assert not list((tmp_path / "run").glob("stage3_*")) and not (tmp_path / "run" / "predictions.csv").exists()
    else:
        assert not (tmp_path / "run").exists()
