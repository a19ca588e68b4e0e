"""A run killed at any moment (SIGKILL) continues with --resume and ends bit-identical to an
uninterrupted run; the run directory records its status and resolved config."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from arcmil.data import save_bags
from arcmil.demo import make_demo_bags

SMALL = ["--d-model", "32", "--nhead", "2", "--dim-feedforward", "64", "--hidden-dim", "32"]  # seconds, not minutes
ARGS = ["train", "--model", "transmil", "--epochs", "7", "--patience", "10", "--n-bootstrap", "50", "--no-progress",
        "--device", "cpu", *SMALL[:6]]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def arcmil(*args):
    return subprocess.run([sys.executable, "-m", "arcmil", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = save_bags(make_demo_bags(n_bags=400, seed=6), root / "bags.npz")
    full = arcmil(*ARGS, "--data", data, "--out", root / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    return root, data


def outputs(run):
    results = json.loads((run / "stage3_transmil_results.json").read_text())
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in results["history"]]
    weights = torch.load(run / "best_transmil.pth", weights_only=True)["state_dict"]
    return results["test"], history, results["threshold"], pd.read_csv(run / "predictions.csv"), weights


def kill_when(args, ready):
    """Start ``arcmil args`` and SIGKILL it as soon as ``ready()`` holds; it must still be running then."""
    proc = subprocess.Popen([sys.executable, "-m", "arcmil", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("kill_after_epoch", [0, 2, 5])
def test_killed_run_resumes_to_identical_results(runs, kill_after_epoch):
    root, data = runs
    run = root / f"killed_{kill_after_epoch}"
    state = run / "run_state.json"
    kill_when([*ARGS, "--data", data, "--out", run],
              lambda: state.exists() and json.loads(state.read_text()).get("epoch", 0) >= kill_after_epoch)
    status = json.loads(state.read_text())
    assert status["status"] == "running" and not (run / "predictions.csv").exists()
    resumed = arcmil("train", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(state.read_text())["status"] == "complete" and not (run / "resume.pt").exists()
    test, history, threshold, predictions, weights = outputs(run)
    ref_test, ref_history, ref_threshold, ref_predictions, ref_weights = outputs(root / "full")
    assert test == ref_test and history == ref_history and threshold == ref_threshold
    pd.testing.assert_frame_equal(predictions, ref_predictions, check_exact=True)
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_run_directory_records_config_provenance_and_refuses_a_second_resume(runs):
    root, data = runs
    full = root / "full"
    assert json.loads((full / "run_state.json").read_text())["status"] == "complete"
    info = json.loads((full / "run_info.json").read_text())
    assert info["data"]["sha256"] and info["versions"]["torch"] == torch.__version__
    config = yaml.safe_load((full / "config.yaml").read_text())
    assert config["model"] == "transmil" and config["epochs"] == 7 and config["d_model"] == 32
    again = arcmil("train", "--resume", full)
    assert again.returncode == 2 and "complete; nothing to resume" in again.stderr
    rerun = arcmil("train", "--config", full / "config.yaml", "--out", root / "rerun")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(root / "rerun" / "predictions.csv"), pd.read_csv(full / "predictions.csv"))
    printed = arcmil("train", "--config", full / "config.yaml", "--print-config")
    assert yaml.safe_load(printed.stdout) == config


def test_killed_comparison_resumes_the_models_that_did_not_finish(runs):
    root, data = runs
    args = ["compare", "--models", "attention_mil,transmil,instance_max", "--epochs", "4", "--seeds", "0,1",
            "--n-bootstrap", "0", "--no-progress", "--data", str(data), *SMALL]
    full = arcmil(*args, "--out", root / "cmp_full")
    assert full.returncode == 0, full.stderr[-2000:]
    run = root / "cmp_killed"
    kill_when([*args, "--out", run], (run / "attention_mil" / "model_summary.json").exists)
    assert not (run / "comparison.csv").exists() and not (run / "instance_max").exists()
    first = (run / "attention_mil" / "seed_0" / "predictions.csv").stat().st_mtime_ns
    resumed = arcmil("compare", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "attention_mil" / "seed_0" / "predictions.csv").stat().st_mtime_ns == first, "done models are kept"
    pd.testing.assert_frame_equal(pd.read_csv(run / "comparison.csv"), pd.read_csv(root / "cmp_full" / "comparison.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(run / "paired_tests.csv"),
                                  pd.read_csv(root / "cmp_full" / "paired_tests.csv"))
    for model in ("transmil", "instance_max"):
        pd.testing.assert_frame_equal(pd.read_csv(run / model / "seed_1" / "predictions.csv"),
                                      pd.read_csv(root / "cmp_full" / model / "seed_1" / "predictions.csv"))
    assert json.loads((run / "run_state.json").read_text())["status"] == "complete"


def test_killed_cross_validation_resumes_the_folds_that_did_not_finish(runs):
    root, data = runs
    args = ["cv", "--model", "transmil", "--folds", "5", "--repeats", "1", "--epochs", "3", "--no-progress",
            "--data", str(data), *SMALL[:6]]
    full = arcmil(*args, "--out", root / "cv_full")
    assert full.returncode == 0, full.stderr[-2000:]
    run = root / "cv_killed"
    kill_when([*args, "--out", run], (run / "folds" / "r0_f1.json").exists)
    assert not (run / "cv_summary.json").exists()
    resumed = arcmil("cv", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_csv(run / "cv_folds.csv"), pd.read_csv(root / "cv_full" / "cv_folds.csv"))
    assert json.loads((run / "cv_summary.json").read_text()) == json.loads((root / "cv_full" / "cv_summary.json")
                                                                        .read_text())
    assert json.loads((run / "run_state.json").read_text())["status"] == "complete"
