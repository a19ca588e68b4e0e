"""Ensembles of seeds: the mean of the members' calibrated probabilities, thresholded on its own
validation scores, through every command (train, predict, explain, export, compare, cv)."""
import json
from dataclasses import replace

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from arcmil.calibration import Calibrator, calibrator_from_dict, fit_calibrator
from arcmil.checkpoint import load_checkpoint
from arcmil.cli import main
from arcmil.config import EvalConfig, TrainConfig
from arcmil.data import Normalizer, save_bags
from arcmil.demo import make_demo_bags
from arcmil.errors import ArcmilError, ConfigError
from arcmil.export import ScoringGraph
from arcmil.labels import BINARY
from arcmil.models import build_model
from arcmil.models.ensemble import Ensemble, member_seeds
from arcmil.pipeline import run_experiment
from arcmil.scoring import score_bags
from arcmil.tasks import make_multiclass_task, make_multilabel_task

SMALL = {"hidden_dim": 16}
CFG = TrainConfig(seed=3, epochs=3, progress=False, ensemble=3)
EVAL = EvalConfig(n_bootstrap=20)
FAST = ["--epochs", "2", "--n-bootstrap", "20", "--no-progress", "--hidden-dim", "16"]


@pytest.fixture(scope="module")
def bags():
    return make_demo_bags(n_bags=120, seed=4)


@pytest.fixture(scope="module")
def ensemble_run(bags):
    return run_experiment(bags, "attention_mil", CFG, evaluation=EVAL, **SMALL)


def test_member_zero_is_the_single_model_of_the_run_seed(bags, ensemble_run):
    single = run_experiment(bags, "attention_mil", replace(CFG, ensemble=1), evaluation=EVAL, **SMALL)
    model = ensemble_run.model
    assert isinstance(model, Ensemble) and model.seeds == member_seeds(3, 3) and ensemble_run.tag.endswith("_ens3")
    test = ensemble_run.parts["test"]
    first = score_bags(model.members[0], test, ensemble_run.normalizer)
    np.testing.assert_array_equal(first.logits, score_bags(single.model, test, single.normalizer).logits)
    other = score_bags(model.members[1], test, ensemble_run.normalizer)
    assert np.abs(first.logits - other.logits).max() > 1e-3, "members differ by their seeds"


def test_probabilities_are_the_mean_of_the_members_calibrated_ones(ensemble_run):
    run, space = ensemble_run, ensemble_run.label_space
    expected = {}
    for name in ("val", "test"):
        member_probs = []
        for member in run.model.members:
            val = score_bags(member, run.parts["val"], run.normalizer)
            calibrator = fit_calibrator(EVAL.calibrate, val.labels, val.logits, space)  # fitted on validation only
            member_probs.append(calibrator(score_bags(member, run.parts[name], run.normalizer).logits))
        expected[name] = np.mean(member_probs, axis=0)
        np.testing.assert_allclose(run.evaluations[name].probs, expected[name], atol=1e-6)
    # the threshold is tuned on the ensemble's validation probabilities, with nothing fitted on top
    assert run.calibrator.method == "none"
    assert run.threshold == pytest.approx(space.tune_threshold(run.evaluations["val"].labels, expected["val"],
                                                               EVAL.threshold_method, None), abs=1e-6)
    record = run.to_dict()
    assert record["ensemble"]["seeds"] == member_seeds(3, 3) and len(record["ensemble"]["calibrations"]) == 3
    assert record["ensemble"]["calibrations"][0]["method"] == "platt"
    assert len(record["best_epoch"]) == 3 and record["epochs_run"] == [3, 3, 3]  # patience 3: no early stop
    assert [row["member"] for row in record["history"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert "ece" in record["test"] and "ece_uncalibrated" not in record["test"]  # its members are calibrated


def test_member_seeds_start_at_the_run_seed_and_neighbouring_ensembles_share_none():
    seeds = [member_seeds(seed, 5) for seed in range(20)]
    assert [s[0] for s in seeds] == list(range(20))
    assert len({s for ens in seeds for s in ens}) == 100
    assert member_seeds(7, 5) == member_seeds(7, 5)


def _member(seed: int):
    torch.manual_seed(seed)
    return build_model("attention_mil", input_dim=8, hidden_dim=8)


def _saturated_ensemble(slope: float) -> Ensemble:
    """Two members of one initialisation (their logits agree in sign) under Platt maps of ``slope``."""
    return Ensemble([_member(0), _member(0)], [Calibrator("platt", slope=slope, bias=1.0), Calibrator("platt", slope=slope / 2)],
                    BINARY, [0, 1]).eval()


def test_confident_bags_keep_distinct_scores_and_gradients():
    """The mean is taken in log space: where every member's probability rounds to 1 in float32 the
    ensemble's logits still order the bags and carry a gradient (integrated gradients need it)."""
    x = torch.randn(6, 5, 8)
    mild, steep = _saturated_ensemble(0.5), _saturated_ensemble(1e5)
    with torch.no_grad():  # moderate logits: the log-odds of the float64 mean of the members' probabilities
        z = torch.stack([c.calibrated_logits(m(x)[0]) for m, c in zip(mild.members, mild.calibrators)]).double()
        np.testing.assert_allclose(mild(x)[0].numpy(), torch.logit(torch.sigmoid(z).mean(0)).numpy(), atol=1e-5)
        logits = steep(x)[0]
    assert torch.isfinite(logits).all() and logits.abs().min() > 20  # every probability rounds to 0 or 1
    assert len(torch.unique(logits)) == len(logits)
    x.requires_grad_(True)
    steep(x)[0].sum().backward()
    assert x.grad.abs().sum() > 0


def test_weights_are_the_members_mean(ensemble_run):
    ensemble_run.model.eval()
    x = torch.randn(4, 7, ensemble_run.parts["test"].dim)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 1, 5])[:, None]
    with torch.no_grad():
        _, weights = ensemble_run.model(x, mask)
        members = torch.stack([m(x, mask)[1] for m in ensemble_run.model.members])
    torch.testing.assert_close(weights, members.mean(0))
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


@pytest.mark.parametrize("kind", ["multiclass", "multilabel"])
def test_beyond_binary_an_ensemble_averages_each_classs_probability(kind):
    bags = (make_multiclass_task(3, n_bags=150, seed=2) if kind == "multiclass"
            else make_multilabel_task(3, n_bags=150, seed=2))
    run = run_experiment(bags, "attention_mil", replace(CFG, ensemble=2, epochs=2), evaluation=EVAL, **SMALL)
    probs = run.evaluations["test"].probs
    if kind == "multiclass":
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    members = []
    for member in run.model.members:
        val = score_bags(member, run.parts["val"], run.normalizer)
        calibrator = fit_calibrator(EVAL.calibrate, val.labels, val.logits, run.label_space)
        members.append(calibrator(score_bags(member, run.parts["test"], run.normalizer).logits))
    np.testing.assert_allclose(probs, np.mean(members, axis=0), atol=1e-5)


@pytest.fixture(scope="module")
def data_file(bags, tmp_path_factory):
    return save_bags(bags, tmp_path_factory.mktemp("data") / "bags.npz")


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ens"
    assert main(["train", "--model", "attention_mil", "--data", str(data_file), "--out", str(out), "--ensemble", "2",
                 "--tracker", "tensorboard", *FAST]) == 0
    return out


def test_train_writes_one_checkpoint_that_predict_and_export_reproduce(trained, data_file, tmp_path):
    results = json.loads((trained / "stage3_attention_mil_results.json").read_text())
    assert results["tag"].endswith("_ens2") and results["ensemble"]["size"] == 2
    assert (trained / "training_curves.png").stat().st_size > 0
    model, meta = load_checkpoint(trained / "best_attention_mil.pth")
    assert isinstance(model, Ensemble) and meta["ensemble"]["seeds"] == member_seeds(0, 2)
    assert main(["predict", "--checkpoint", str(trained / "best_attention_mil.pth"), "--data", str(data_file),
                 "--out", str(tmp_path / "scores.csv")]) == 0
    run = pd.read_csv(trained / "predictions.csv").set_index("bag_id")
    scored = pd.read_csv(tmp_path / "scores.csv").set_index("bag_id").loc[run.index]
    np.testing.assert_allclose(scored["prob"], run["prob"], atol=1e-6)
    np.testing.assert_array_equal(scored["pred"], run["pred"])
    assert main(["export", "--checkpoint", str(trained / "best_attention_mil.pth"), "--out",
                 str(tmp_path / "m.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).normal(size=(3, 9, model.config.input_dim)).astype(np.float32)
    mask = np.arange(9)[None, :] < np.array([9, 2, 5])[:, None]
    probability, *_ = session.run(None, {"embeddings": x, "mask": mask})
    graph = ScoringGraph(model, Normalizer.from_dict(meta["normalization"]), calibrator_from_dict(meta["calibration"]))
    with torch.no_grad():
        expected = graph(torch.from_numpy(x), torch.from_numpy(mask))[0].numpy()
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    metadata = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(metadata["arcmil.ensemble"])["seeds"] == member_seeds(0, 2)
    # each member's epochs reach the tracker under its own prefix, on one increasing step count
    events = EventAccumulator(str(trained / "tensorboard")).Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in ("epoch/member0/val_loss", "epoch/member1/val_loss")}
    assert steps == {"epoch/member0/val_loss": [1, 2], "epoch/member1/val_loss": [3, 4]}


def test_explain_averages_the_members_weights(trained, data_file, tmp_path):
    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(trained / "best_attention_mil.pth"), "--data", str(data_file),
                 "--out", str(out)]) == 0
    importances = pd.read_csv(out / "importances.csv")
    assert {"weights", "occlusion", "integrated_gradients"} <= set(importances.columns)
    assert np.isfinite(importances[["weights", "occlusion", "integrated_gradients"]].to_numpy()).all()
    run = pd.read_csv(trained / "predictions.csv").set_index("bag_id")
    bag = run.index[0]  # a validation or test bag: its weights are in predictions.csv
    explained = importances[importances.bag_id == bag]
    np.testing.assert_allclose(explained["weights"], run.loc[bag].filter(like="w_").dropna().astype(float), atol=1e-6)
    assert (out / "faithfulness.json").exists()
    for method in ("occlusion", "integrated_gradients"):  # the ensemble's own output moves with its windows
        assert (importances.groupby("bag_id")[method].apply(lambda v: v.abs().max()) > 0).mean() > 0.9, method


def test_compare_shows_each_model_alone_and_as_an_ensemble(data_file, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "attention_mil,pooled_logistic", "--data", str(data_file), "--out", str(out),
                 "--seeds", "0,1", "--ensemble", "2", *FAST]) == 0
    summary = pd.read_csv(out / "comparison.csv")
    assert list(summary.model) == ["attention_mil", "attention_mil_ens2", "pooled_logistic"]
    assert summary.tag[1] == summary.tag[0] + "_ens2"
    pairs = pd.read_csv(out / "paired_tests.csv")
    assert {("attention_mil", "attention_mil_ens2")} <= set(zip(pairs.model_a, pairs.model_b))
    single = json.loads((out / "attention_mil" / "seed_0" / "stage3_attention_mil_results.json").read_text())
    assert "ensemble" not in single and single["train_config"]["ensemble"] == 1
    ensembles = [json.loads((out / "attention_mil_ens2" / f"seed_{seed}" / "stage3_attention_mil_results.json"
                             ).read_text())["ensemble"]["seeds"] for seed in (0, 1)]
    assert ensembles == [member_seeds(0, 2), member_seeds(1, 2)] and not set(ensembles[0]) & set(ensembles[1])
    report = (out / "report.html").read_text()
    assert "attention_mil_ens2: training curves" in report and "attention_mil: training curves" in report


def test_cv_trains_an_ensemble_per_fold(data_file, tmp_path):
    out = tmp_path / "cv"
    assert main(["cv", "--model", "attention_mil", "--data", str(data_file), "--out", str(out), "--folds", "3",
                 "--repeats", "1", "--ensemble", "2", *FAST]) == 0
    folds = pd.read_csv(out / "cv_folds.csv")
    assert len(folds) == 3 and all(len(json.loads(epochs)) == 2 for epochs in folds.best_epoch)


def test_an_ensemble_of_a_deterministic_model_is_refused(data_file, tmp_path, capsys):
    assert main(["train", "--model", "pooled_svm", "--data", str(data_file), "--out", str(tmp_path / "r"),
                 "--ensemble", "3", "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pooled_svm" in err[0] and "identical members" in err[0]
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="identical members"):  # the Python pipeline refuses it too
        run_experiment(make_demo_bags(n_bags=40, seed=0), "pooled_logistic", CFG, evaluation=EVAL)


@pytest.mark.parametrize("damage, message", [
    (lambda r: {**r, "calibrations": r["calibrations"][:1]}, "needs size >= 2 and that many integer seeds"),
    (lambda r: {**r, "size": 1, "seeds": r["seeds"][:1], "calibrations": r["calibrations"][:1]}, "size 1"),
    (lambda r: {k: v for k, v in r.items() if k != "seeds"}, "must be a mapping with size, seeds, calibrations"),
    (lambda r: [r], "must be a mapping"),
    (lambda r: {**r, "calibrations": [{"method": "magic"}] * 2}, "member's calibration is not valid"),
])
def test_a_checkpoint_whose_ensemble_record_is_inconsistent_is_refused(trained, tmp_path, damage, message):
    payload = torch.load(trained / "best_attention_mil.pth", weights_only=True)
    payload["ensemble"] = damage(payload["ensemble"])
    torch.save(payload, tmp_path / "bad.pth")
    with pytest.raises(ArcmilError, match=r"bad\.pth: the ensemble record|bad\.pth: an ensemble member") as error:
        load_checkpoint(tmp_path / "bad.pth")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_python_api_fits_saves_and_loads_an_ensemble(bags, tmp_path):
    from arcmil.api import MILClassifier

    clf = MILClassifier("attention_mil", ensemble=2, epochs=2, n_bootstrap=0, **SMALL).fit(bags)
    assert isinstance(clf.model_, Ensemble) and clf.results_["ensemble"]["size"] == 2
    clf.save(tmp_path / "m.pth")
    again = MILClassifier.load(tmp_path / "m.pth")
    assert again.get_params()["ensemble"] == 2 and again.get_params()["seed"] == clf.model_.seeds[0]
    np.testing.assert_array_equal(again.predict_proba(bags), clf.predict_proba(bags))


def test_a_search_space_cannot_search_the_ensemble_size(tmp_path):
    from arcmil.errors import ConfigError
    from arcmil.tune import search_space

    (tmp_path / "space.yaml").write_text("ensemble: {choices: [1, 3]}\n")
    with pytest.raises(ConfigError, match="ensemble is not searched"):
        search_space("attention_mil", {}, tmp_path / "space.yaml")


def test_tune_searches_single_models_and_ensembles_the_final_one(data_file, tmp_path):
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"epochs": {"low": 1, "high": 2}, "patience": None,
                                     "hidden_dim": {"choices": [8, 16]}}))
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(data_file), "--trials", "2", "--space", str(space), "--ensemble", "2",
                 "--n-bootstrap", "0", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "best" / "stage3_attention_mil_results.json").read_text())
    assert results["ensemble"]["size"] == 2 and results["tag"].endswith("_ens2")
    assert yaml.safe_load((out / "best_config.yaml").read_text())["ensemble"] == 2  # train --config repeats it
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2


def test_an_interrupted_ensemble_run_resumes_by_training_again(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    kept = {"config.yaml", "run_info.json", "run_state.json"}  # what a run killed before publishing holds
    for path in run.iterdir():
        if path.name not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    state = json.loads((run / "run_state.json").read_text())
    (run / "run_state.json").write_text(json.dumps({**state, "status": "running"}))
    assert main(["train", "--resume", str(run)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(run / "predictions.csv"), pd.read_csv(trained / "predictions.csv"))


def test_an_isotonic_ensemble_exports_a_graph_onnxruntime_loads(tmp_path):
    """Every member's isotonic map in one graph: its log-odds are spelled out (torch.logit(eps=) exported
    twice gave duplicate node names that onnxruntime refused)."""
    from arcmil.checkpoint import save_checkpoint
    from arcmil.export import export_onnx

    calibrators = [Calibrator("isotonic", knots_x=(0.1, 0.5, 0.9), knots_y=(0.0, 0.4 + i / 10, 1.0)) for i in range(2)]
    model = Ensemble([_member(0), _member(1)], calibrators, BINARY, [0, 1]).eval()
    normalizer = Normalizer.from_dict({"kind": "none", "mean": None, "std": None})
    save_checkpoint(tmp_path / "m.pth", model, "attention_mil", threshold=0.5, threshold_method="f1",
                    normalizer=normalizer)
    export_onnx(tmp_path / "m.pth", tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype(np.float32)
    mask = np.arange(6)[None, :] < np.array([6, 2, 4, 1])[:, None]
    probability, logit, _ = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(
        None, {"embeddings": x, "mask": mask})
    with torch.no_grad():
        expected = ScoringGraph(model, normalizer, Calibrator())(torch.from_numpy(x), torch.from_numpy(mask))
    np.testing.assert_allclose(probability, expected[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(logit, expected[1].numpy(), atol=1e-4)


def test_a_one_seed_comparison_names_the_ensembles_row(data_file, tmp_path):
    out = tmp_path / "cmp1"
    assert main(["compare", "--models", "attention_mil", "--data", str(data_file), "--out", str(out),
                 "--seeds", "0", "--ensemble", "2", *FAST]) == 0
    assert list(pd.read_csv(out / "comparison.csv").model) == ["attention_mil", "attention_mil_ens2"]
    report = (out / "report.html").read_text()
    assert "attention_mil_ens2: reliability of the mean of platt-calibrated members" in report
