"""Two gloo processes under torchrun give what one process gives with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

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
    predicted = scored[0].set_index("bag_id").loc[one_pred["bag_id"], "prob"]  # the run's validation and test bags
    np.testing.assert_allclose(predicted, one_pred["prob"], rtol=1e-5)
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_roc_auc"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    assert one["history"][-1]["train_loss"] != pytest.approx(one["history"][0]["train_loss"], rel=1e-3), \
        "the model must actually train for the comparison to mean anything"
    np.testing.assert_allclose(two_pred["prob"], one_pred["prob"], rtol=1e-4, atol=1e-6)
    assert list(two_pred["bag_id"]) == list(one_pred["bag_id"])
    assert two["threshold"]["value"] == pytest.approx(one["threshold"]["value"], rel=1e-4)


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_a_killed_two_process_run_with_dropout_resumes_each_rank_with_its_own_rng(tmp_path):
    """Each rank draws its own dropout masks; a resume must give each its own RNG state back (not rank 0's),
    or the resumed run's numbers drift from the uninterrupted one's."""
    import signal
    import time

    data = save_bags(make_demo_bags(n_bags=300, seed=4), tmp_path / "bags.npz")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = [*ARGS[:ARGS.index("--dropout-p")], *ARGS[ARGS.index("--dropout-p") + 2:], "--epochs", "8", "--patience",
            "8", "--data", str(data)]
    arcmil(torchrun, [*args, "--out", str(tmp_path / "full")])
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*torchrun, "-m", "arcmil", *args, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    state, deadline = run / "run_state.json", time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (
            state.exists() and json.loads(state.read_text()).get("epoch", 0) >= 3):
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    # torchrun and both ranks (torchrun starts each rank in a session of its own): every process whose
    # command line names this run's directory
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(run).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone meanwhile
    proc.wait()
    assert json.loads(state.read_text())["status"] == "running"
    arcmil(torchrun, ["train", "--resume", str(run)])

    def history(out):  # every epoch's losses: the epochs after the kill drew their dropout masks after the resume
        rows = json.loads((out / "stage3_transmil_results.json").read_text())["history"]
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert len(history(run)) == 8 and history(run) == history(tmp_path / "full")
    pd.testing.assert_frame_equal(pd.read_csv(run / "predictions.csv"), pd.read_csv(tmp_path / "full" / "predictions.csv"),
                                  check_exact=True)
