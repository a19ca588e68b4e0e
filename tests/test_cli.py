"""The command line end to end on small data."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags

FAST = ["--epochs", "2", "--n-bootstrap", "50", "--no-progress"]
TINY_TRANSFORMER = ["--d-model", "32", "--nhead", "2", "--dim-feedforward", "64"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return save_bags(make_demo_bags(n_bags=120, seed=2), tmp_path_factory.mktemp("data") / "bags.npz")


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "transmil_run"
    assert main(["train", "--model", "transmil", "--data", str(data_file), "--out", str(out), *FAST,
                 *TINY_TRANSFORMER]) == 0
    return out


def test_train_writes_every_output(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"best_transmil.pth", "stage3_transmil_results.json", "stage3_transmil_results.csv", "predictions.csv",
            "split.csv", "roc.png", "pr.png", "training_curves.png", "attention.png"} <= names
    results = json.loads((trained / "stage3_transmil_results.json").read_text())
    assert results["tag"] == "transmil_cls_d32_h2_L2_ff64_drop01_sin"
    assert results["model_config"]["d_model"] == 32 and results["train_config"]["epochs"] == 2
    assert results["eval_config"]["n_bootstrap"] == 50 and results["threshold"]["method"] == "f1"
    assert len(results["history"]) == results["epochs_run"] == 2 and not results["stopped_early"]  # patience 3 > 2
    for key in ("roc_auc", "pr_auc", "f1", "precision", "recall", "specificity", "accuracy", "balanced_accuracy",
                "mcc", "confusion_matrix", "ci"):
        assert key in results["test"]
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns[:5]) == ["bag_id", "split", "label", "prob", "pred"]
    assert set(predictions.split) == {"val", "test"}  # training bags only with --score-train
    split = pd.read_csv(trained / "split.csv")
    assert len(split) == 120 and split.split.value_counts().to_dict() == {"train": 84, "val": 18, "test": 18}
    assert set(split.bag_id[split.split != "train"]) == set(predictions.bag_id)
    weights = predictions.filter(like="w_").to_numpy()
    np.testing.assert_allclose(np.nansum(weights, axis=1), 1.0, rtol=1e-5)
    assert not any(p.name.startswith(".") for p in trained.parent.iterdir()), "no staging leftovers"


def test_predict_reproduces_the_test_metrics(trained, data_file, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["predict", "--checkpoint", str(trained / "best_transmil.pth"), "--data", str(data_file),
                 "--out", str(out)]) == 0
    scored = pd.read_csv(out).set_index("bag_id")
    assert "split" not in scored.columns  # the file has none: the run drew its own, recorded in split.csv
    run = pd.read_csv(trained / "predictions.csv")
    theirs = run[run.split == "test"].set_index("bag_id")
    ours = scored.loc[theirs.index]
    np.testing.assert_allclose(ours["prob"], theirs["prob"], rtol=1e-6)
    np.testing.assert_array_equal(ours["pred"], theirs["pred"])
    from arcmil.metrics import binary_metrics

    results = json.loads((trained / "stage3_transmil_results.json").read_text())
    again = binary_metrics(ours["label"], ours["prob"], results["threshold"]["value"])
    assert again["f1"] == pytest.approx(results["test"]["f1"]) and again["roc_auc"] == pytest.approx(
        results["test"]["roc_auc"])
    assert "roc_auc" in capsys.readouterr().out
    # never overwrite silently
    assert main(["predict", "--checkpoint", str(trained / "best_transmil.pth"), "--data", str(data_file),
                 "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_predict_refuses_data_of_another_dimension(trained, tmp_path, capsys):
    other = save_bags(make_demo_bags(n_bags=20, dim=64, seed=3), tmp_path / "d64.npz")
    out = tmp_path / "x.csv"
    assert main(["predict", "--checkpoint", str(trained / "best_transmil.pth"), "--data", str(other),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "embedding dimension 64" in err and "input_dim 256" in err and not out.exists()


def test_train_refuses_a_non_empty_out(trained, data_file, capsys):
    assert main(["train", "--data", str(data_file), "--out", str(trained), *FAST]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, embeddings=np.ones((4, 3, 2), np.float32), labels=[0, 1, 0.5, 1])
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "arcmil", "train", "--data", str(bad), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "bag '2': field 'labels'" in proc.stderr and str(bad) in proc.stderr
    assert not out.exists()


def test_config_file_and_flag_errors(data_file, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: attention_mil\nepochs: 1\nhiden_dim: 64\n")
    assert main(["train", "--config", str(config), "--data", str(data_file), "--out", str(tmp_path / "a")]) == 2
    assert "did you mean 'hidden_dim'" in capsys.readouterr().err
    config.write_text("model: attention_mil\nepochs: 1\nhidden_dim: 16\nn_bootstrap: 20\nprogress: false\n")
    out = tmp_path / "b"
    assert main(["train", "--config", str(config), "--data", str(data_file), "--out", str(out)]) == 0
    results = json.loads((out / "stage3_attention_mil_results.json").read_text())
    assert results["epochs_run"] == 1 and results["tag"] == "abmil_h16_drop01"
    assert main(["train", "--model", "attention_mil", "--nhead", "2", "--data", str(data_file),
                 "--out", str(tmp_path / "c")]) == 2
    assert "does not apply to model 'attention_mil'" in capsys.readouterr().err


def test_compare_runs_models_through_one_pipeline(data_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--data", str(data_file), "--models", "attention_mil,transformer_mil_topk",
                 "--out", str(out), *FAST, *TINY_TRANSFORMER]) == 0
    printed = capsys.readouterr().out
    assert "abmil_h128_drop01" in printed and "tmil_topk2_d32_h2_L2_ff64_drop01_sin" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["model"]) == ["attention_mil", "transformer_mil_topk"]
    assert (out / "comparison.md").exists() and (out / "roc.png").exists()
    assert (out / "transformer_mil_topk" / "best_transformer_mil_topk.pth").exists()
    splits = [pd.read_csv(out / m / "split.csv").set_index("bag_id")["split"] for m in table["model"]]
    assert splits[0].sort_index().equals(splits[1].sort_index()), "every model sees the same split"


def test_demo_data_command(tmp_path, capsys):
    out = tmp_path / "demo.csv"
    assert main(["demo-data", "--out", str(out), "--n-bags", "30"]) == 0
    assert pd.read_csv(out)["bag_id"].nunique() == 30
    assert main(["demo-data", "--out", str(out), "--n-bags", "30"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["demo.csv"]


def test_bag_longer_than_a_learned_table_is_refused_before_training(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "transmil", "--pos-enc", "learned", "--max-len", "8", "--data", str(data_file),
                 "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "field 'embeddings'" in err and "max_len 8" in err and "bag 'doc" in err
    assert not out.exists()


def test_cv_command_writes_folds_and_summary(data_file, tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(data_file), "--model", "attention_mil", "--folds", "3", "--repeats", "2",
                 "--hidden-dim", "16", "--out", str(out), *FAST]) == 0
    assert "at validation threshold" in capsys.readouterr().out
    assert len(list((out / "folds").glob("r*_f*.json"))) == 6
    folds = pd.read_csv(out / "cv_folds.csv")
    assert folds.groupby("repeat")["n_test"].sum().tolist() == [120, 120]
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["summary"]["at_0.5"]["accuracy"]["n"] == 6


def test_compare_over_seeds_reports_mean_std_and_paired_tests(data_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--data", str(data_file), "--models", "attention_mil,instance_max", "--seeds", "0,1,2",
                 "--out", str(out), "--hidden-dim", "16", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "±" in printed and "Nadeau" not in printed  # the printed paired table; its name is in the .md
    tests = pd.read_csv(out / "paired_tests.csv")
    assert set(tests["metric"]) == {"test_roc_auc", "test_f1", "test_accuracy"} and (tests["n"] == 3).all()
    assert "corrected resampled t" in (out / "comparison.md").read_text()
    runs = pd.read_csv(out / "comparison_runs.csv")
    assert len(runs) == 6 and (out / "instance_max" / "seed_2" / "best_instance_max.pth").exists()


def test_explain_command_scores_localisation(trained, data_file, tmp_path, capsys):
    out = tmp_path / "explain"
    assert main(["explain", "--checkpoint", str(trained / "best_transmil.pth"), "--data", str(data_file),
                 "--out", str(out), "--ig-steps", "8", "--n-plots", "6"]) == 0
    assert "instance-localisation ROC-AUC" in capsys.readouterr().out
    for method in ("weights", "occlusion", "integrated_gradients"):
        assert (out / f"heatmap_{method}.png").exists()
    scores = json.loads((out / "localisation.json").read_text())
    assert set(scores) == {"weights", "occlusion", "integrated_gradients"}
    frame = pd.read_csv(out / "importances.csv")
    positive = frame[frame["label"] == 1]  # localisation.json agrees with scikit-learn on the written windows
    for method, score in scores.items():
        assert score["pooled"] == pytest.approx(roc_auc_score(positive["instance_label"], positive[method]))
    assert frame["bag_id"].nunique() == 120
    # faithfulness beside localisation: one row per bag and method, pooled means in the JSON
    per_bag = pd.read_csv(out / "faithfulness.csv")
    assert len(per_bag) == 3 * 120 and (out / "deletion.png").exists()
    np.testing.assert_allclose(per_bag["aopcr"], per_bag["aopc"] - per_bag["aopc_random"], atol=1e-9)
    pooled = json.loads((out / "faithfulness.json").read_text())["methods"]
    for method, rows in per_bag.groupby("method"):
        assert pooled[method]["aopcr"] == pytest.approx(rows["aopcr"].mean())
    assert main(["explain", "--checkpoint", str(trained / "best_transmil.pth"), "--data", str(data_file),
                 "--out", str(tmp_path / "x"), "--methods", "weights,shap"]) == 2
    assert "unknown explanation method 'shap'" in capsys.readouterr().err


def test_compare_over_folds_pairs_the_same_folds(data_file, tmp_path, capsys):
    out = tmp_path / "cmpf"
    assert main(["compare", "--data", str(data_file), "--models", "attention_mil,instance_max", "--folds", "3",
                 "--seeds", "0", "--out", str(out), "--hidden-dim", "16", *FAST]) == 0
    runs = pd.read_csv(out / "comparison_runs.csv")
    assert len(runs) == 6 and set(runs.columns) >= {"model", "repeat", "fold", "roc_auc", "f1"}
    assert (pd.read_csv(out / "paired_tests.csv")["n"] == 3).all()
    assert (out / "instance_max" / "cv_summary.json").exists()
    assert "3-fold stratified CV" in capsys.readouterr().out


def test_long_bags_get_window_weights_in_long_format(tmp_path, capsys):
    bags = make_demo_bags(n_bags=40, seed=3)
    bags = bags.with_bags([np.tile(b, (60, 1)) if i == 0 else b for i, b in enumerate(bags.bags)])  # 600 windows
    bags.instance_labels = None
    data = save_bags(bags, tmp_path / "long.npz")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--score-train", *FAST]) == 0
    assert "w_0" not in pd.read_csv(tmp_path / "run" / "predictions.csv").columns
    weights = pd.read_csv(tmp_path / "run" / "window_weights.csv")  # every bag: --score-train
    assert len(weights) == 600 + 39 * 10 and set(weights.columns) == {"bag_id", "window", "weight"}
    np.testing.assert_allclose(weights.groupby("bag_id")["weight"].sum(), 1.0, rtol=1e-5)
    assert main(["predict", "--checkpoint", str(tmp_path / "run" / "best_attention_mil.pth"), "--data", str(data),
                 "--out", str(tmp_path / "scores.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "scores_window_weights.csv")) == 990
    # short bags scored over those predictions: the long weights described the replaced output and go with it
    short = save_bags(make_demo_bags(n_bags=20, seed=4), tmp_path / "short.npz")
    checkpoint = str(tmp_path / "run" / "best_attention_mil.pth")
    assert main(["predict", "--checkpoint", checkpoint, "--data", str(short), "--out", str(tmp_path / "scores.csv")]) == 2
    assert "scores.csv: already exists" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", checkpoint, "--data", str(short), "--out", str(tmp_path / "scores.csv"),
                 "--overwrite"]) == 0
    assert "w_9" in pd.read_csv(tmp_path / "scores.csv").columns and not (tmp_path / "scores_window_weights.csv").exists()
    # a file this predict would not write does not block it
    (tmp_path / "new_window_weights.csv").write_text("someone's file\n")
    assert main(["predict", "--checkpoint", checkpoint, "--data", str(short), "--out", str(tmp_path / "new.csv")]) == 0
    assert (tmp_path / "new_window_weights.csv").read_text() == "someone's file\n"


def test_classic_mil_sources_get_their_recorded_preset(capsys):
    """mil: data gets standardised features and the classic preset; flags still win; config shows it."""
    import yaml

    assert main(["cv", "--data", "mil:musk1", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["normalize"] == "standardize" and printed["batch_size"] == 1 and printed["epochs"] == 50
    assert main(["cv", "--data", "mil:musk1", "--normalize", "none", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["normalize"] == "none"
    assert main(["train", "--print-config"]) == 0  # the demo data (unit embeddings): plain defaults
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["normalize"] == "l2" and printed["batch_size"] == 16 and printed["epochs"] == 10


def _libraries_imported(argvs: list[list[str]]) -> tuple[list[str], str]:
    """Run ``main(argv)`` for each argv in a fresh interpreter: the heavy libraries it imported, its stderr."""
    probe = ("import sys\nfrom arcmil.cli import main\n"
             f"for argv in {argvs!r}:\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn', 'scipy', 'pandas'}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"')), done.stderr


def test_help_and_a_bad_flag_import_no_heavy_library():
    """``arcmil --help`` and a mistyped flag answer from the torch-free settings: neither torch,
    scikit-learn, scipy nor pandas is imported (each costs seconds on a busy machine)."""
    imported, stderr = _libraries_imported([["--help"], ["train", "--help"], ["train", "--no-such-flag"]])
    assert imported == []
    assert "unrecognized arguments: --no-such-flag" in stderr


def test_predict_on_unlabelled_bags_imports_neither_scikit_learn_nor_scipy(trained, tmp_path):
    """Scoring applies a fitted map: scikit-learn and scipy are for fitting and for metrics on labels."""
    bags = make_demo_bags(n_bags=3, seed=5)
    unlabelled = save_bags(dataclasses.replace(bags, labels=None, instance_labels=None), tmp_path / "new.npz")
    imported, _ = _libraries_imported([["predict", "--checkpoint", str(trained / "best_transmil.pth"),
                                        "--data", str(unlabelled), "--out", str(tmp_path / "scores.csv")]])
    assert imported == ["pandas", "torch"]
    assert len(pd.read_csv(tmp_path / "scores.csv")) == 3
