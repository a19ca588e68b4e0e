"""Two gloo processes under torchrun give what one process gives with the same global batch."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from arcmil.data import save_bags
from arcmil.data.store import convert_to_store
from arcmil.demo import make_demo_bags

# 84 training bags in global batches of 83: unequal shards (42 + 41) and a last batch of one bag, for
# which the second rank computes a stand-in that must not count. No dropout: its masks are drawn per rank.
ARGS = ["train", "--model", "transmil", "--epochs", "3", "--batch-size", "83", "--lr", "3e-3", "--dropout-p", "0",
        "--n-bootstrap", "0", "--no-progress", "--d-model", "32", "--nhead", "2", "--dim-feedforward", "64",
        "--device", "cpu"]


def arcmil(prefix, args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*prefix, "-m", "arcmil", *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def run(prefix, data, out):
    arcmil(prefix, [*ARGS, "--data", str(data), "--out", str(out)])
    return json.loads((out / "stage3_transmil_results.json").read_text()), pd.read_csv(out / "predictions.csv")


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_two_processes_match_one(tmp_path):
    data = save_bags(make_demo_bags(n_bags=120, seed=4), tmp_path / "bags.npz")
    one, one_pred = run([sys.executable], data, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two, two_pred = run(torchrun, data, tmp_path / "two")
    assert two["environment"]["processes"] == 2 and one["environment"]["processes"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bags.npz", "one", "two"], "only rank 0 writes"

    # scoring a store in parallel: each rank scores its shards, rank 0 writes every bag once
    convert_to_store(data, tmp_path / "store", dtype="float32")
    checkpoint = str(tmp_path / "one" / "best_transmil.pth")
    for prefix, name in (([sys.executable], "one.csv"), (torchrun, "two.csv")):
        arcmil(prefix, ["predict", "--checkpoint", checkpoint, "--data", str(tmp_path / "store"), "--batch-size", "7",
                        "--out", str(tmp_path / name), "--device", "cpu"])
    scored = [pd.read_csv(tmp_path / name) for name in ("one.csv", "two.csv")]
    assert list(scored[1]["bag_id"]) == list(scored[0]["bag_id"]) and len(scored[0]) == 120
    np.testing.assert_allclose(scored[1]["prob"], scored[0]["prob"], rtol=1e-5)
    trained_scores = one_pred.set_index("bag_id").loc[scored[0]["bag_id"], "prob"]
    np.testing.assert_allclose(scored[0]["prob"], trained_scores, rtol=1e-5)
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_roc_auc"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    assert one["history"][-1]["train_loss"] != pytest.approx(one["history"][0]["train_loss"], rel=1e-3), \
        "the model must actually train for the comparison to mean anything"
    np.testing.assert_allclose(two_pred["prob"], one_pred["prob"], rtol=1e-4, atol=1e-6)
    assert list(two_pred["bag_id"]) == list(one_pred["bag_id"])
    assert two["threshold"]["value"] == pytest.approx(one["threshold"]["value"], rel=1e-4)
