"""The classical bag model: pooled statistics against numpy, its decision function against scikit-learn's,
and the commands a neural model goes through (train, predict, export, cv, tune)."""
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from arcmil.checkpoint import load_checkpoint
from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.models import build_model
from arcmil.models.pooled_stats import pooled_features
from arcmil.tasks import make_multilabel_task, make_task
from arcmil.tune import search_space

FAST = ["--n-bootstrap", "20", "--no-progress"]


def test_pooled_features_are_each_bags_statistics_whatever_its_padding(rng):
    x = torch.as_tensor(rng.normal(size=(2, 6, 3)), dtype=torch.float32)
    x[1, 4:] = float("nan")
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    features, selections = pooled_features(x, mask)
    real = x[1, :4].numpy()
    expected = np.concatenate([real.mean(0), real.max(0), real.min(0), real.std(0)])
    np.testing.assert_allclose(features[1].numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(selections.sum(1), torch.ones(2))
    assert (selections[1, 4:] == 0).all()
    top = int(real[:, 0].argmax())  # the window holding feature 0's maximum got one pick of 2 D
    assert selections[1, top] >= 1 / 6


def _fitted(name, bags, **cfg):
    model = build_model(name, input_dim=bags.dim, **cfg)
    features = np.stack([pooled_features(torch.as_tensor(b)[None], torch.ones(1, len(b), dtype=torch.bool))[0][0]
                         .numpy() for b in bags.bags])
    model.fit_features(features, bags.labels, bags.label_space.kind)
    z = (features - features.mean(0)) / np.where(features.std(0) > 0, features.std(0), 1.0)
    with torch.no_grad():
        logits = torch.stack([model(torch.as_tensor(b)[None])[0][0] for b in bags.bags]).numpy()
    return model, z, logits


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_the_decision_function_is_scikit_learns(classifier):
    bags = make_task("demo", n_bags=80, dim=6, seed=0)
    model, z, logits = _fitted(f"pooled_{classifier}", bags, C=2.0)
    if classifier == "logistic":
        reference = LogisticRegression(C=2.0, class_weight="balanced", max_iter=5000).fit(z, bags.labels)
    else:
        reference = SVC(C=2.0, gamma=1.0 / z.shape[1], class_weight="balanced").fit(z, bags.labels)
        assert model.config.n_support == len(reference.support_vectors_)
    np.testing.assert_allclose(logits, reference.decision_function(z), rtol=1e-3, atol=1e-3)


def test_beyond_binary_each_output_is_its_own_problem():
    classes = make_task("multiclass4", n_bags=120, dim=6, seed=0)
    _, z, logits = _fitted("pooled_logistic", classes, n_outputs=4)
    softmax = LogisticRegression(class_weight="balanced", max_iter=5000).fit(z, classes.labels)
    np.testing.assert_allclose(logits, softmax.decision_function(z), rtol=1e-3, atol=1e-3)
    tags = make_multilabel_task(3, n_bags=120, dim=6, n_windows=10, seed=0)
    model, z, logits = _fitted("pooled_svm", tags, n_outputs=3)
    for k in range(3):
        one = SVC(gamma=1.0 / z.shape[1], class_weight="balanced").fit(z, tags.labels[:, k])
        np.testing.assert_allclose(logits[:, k], one.decision_function(z), rtol=1e-3, atol=1e-3)


def test_a_search_of_a_model_fitted_by_scikit_learn_leaves_the_training_settings_alone(tmp_path):
    assert set(search_space("pooled_logistic", {})) == {"C"}
    assert set(search_space("pooled_svm", {})) == {"C", "gamma"}
    shared = tmp_path / "space.yaml"  # a space file written for a comparison with neural models
    shared.write_text("lr: {low: 0.0001, high: 0.01, log: true}\nC: {low: 0.1, high: 10, log: true}\n")
    assert search_space("pooled_svm", {}, str(shared)) == {"C": {"low": 0.1, "high": 10, "log": True},
                                                         "gamma": {"low": 0.1, "high": 10.0, "log": True}}


def test_two_named_classes_are_one_softmax_equal_to_scikit_learns_probabilities(rng):
    model = build_model("pooled_logistic", input_dim=3, n_outputs=2)
    features, labels = rng.normal(size=(40, 12)), np.arange(40) % 2
    model.fit_features(features, labels, "multiclass")
    z = (features - features.mean(0)) / features.std(0)
    reference = LogisticRegression(class_weight="balanced", max_iter=5000).fit(z, labels)
    logits = torch.as_tensor(z, dtype=torch.float32) @ model.coef.T + model.intercept
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), reference.predict_proba(z), atol=1e-5)


def test_integrated_gradients_stay_finite_on_a_one_window_bag():
    from conftest import fitted_pooled

    from arcmil.explain import integrated_gradients

    model = fitted_pooled("pooled_svm", 4)
    attributions = integrated_gradients(model, torch.randn(1, 4), steps=8)
    assert torch.isfinite(attributions).all()


def test_train_predict_export_and_cv_like_any_model(tmp_path, capsys):
    data = save_bags(make_task("sparse_presence", n_bags=400, dim=32, seed=1), tmp_path / "presence.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "pooled_svm", "--data", str(data), "--out", str(run), *FAST]) == 0
    model, meta = load_checkpoint(run / "best_pooled_svm.pth")  # plain tensors, sized by the fit
    assert meta["model_config"]["n_support"] == model.support.shape[0] > 0
    results = pd.read_csv(run / "stage3_pooled_svm_results.csv").iloc[0]
    assert results["best_epoch"] == 1 and results["test_roc_auc"] > 0.7  # well above chance: a witness sets the pooled max
    out = tmp_path / "scored.csv"
    assert main(["predict", "--checkpoint", str(run / "best_pooled_svm.pth"), "--data", str(data),
                 "--out", str(out)]) == 0
    scored = pd.read_csv(out)
    split = pd.read_csv(run / "predictions.csv")
    merged = split.merge(scored, on="bag_id", suffixes=("_run", "_predict"))
    np.testing.assert_allclose(merged["prob_run"], merged["prob_predict"], atol=1e-6)
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(run / "best_pooled_svm.pth"), "--out", str(graph)]) == 0
    assert main(["predict", "--checkpoint", str(graph), "--data", str(data), "--out", str(tmp_path / "o.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "o.csv")["prob"], scored["prob"], atol=1e-4)
    assert main(["cv", "--model", "pooled_logistic", "--data", str(data), "--folds", "3", "--repeats", "1",
                 "--out", str(tmp_path / "cv"), *FAST]) == 0
    assert pd.read_csv(tmp_path / "cv" / "cv_folds.csv")["test_roc_auc"].between(0.5, 1).all()


def test_the_python_estimator_fits_scores_explains_and_reloads_a_classical_model(tmp_path):
    from arcmil.api import MILClassifier

    bags = make_task("sparse_presence", n_bags=160, dim=16, seed=0)
    windows = [bags.bags[i] for i in range(len(bags))]
    clf = MILClassifier("pooled_logistic").fit(windows, bags.labels)  # buffers only: no parameters
    probs = clf.predict_proba(windows[:5])
    assert probs.shape == (5, 2)  # scikit-learn's two columns
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert set(clf.explain(windows[:2], methods=("weights", "occlusion"))["bag_id"]) == {"0", "1"}
    clf.save(tmp_path / "clf.pth")
    np.testing.assert_allclose(MILClassifier.load(tmp_path / "clf.pth").predict_proba(windows[:5]), probs)
