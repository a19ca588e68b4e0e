"""Calibrated probabilities: fitted on validation, agreeing with scikit-learn, lowering the calibration
error of a miscalibrated model, and carried by checkpoints into predict and the Python API."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from arcmil import MILClassifier
from arcmil.calibration import MIN_PLATT_SLOPE, PLATT_C, Calibrator, calibration_metrics, expected_calibration_error
from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags
from arcmil.errors import ArcmilError


def overconfident(n: int, seed: int, scale: float = 4.0, shift: float = 1.5):
    """Labels drawn from sigmoid(z) and a model's logits that are too sharp and shifted (scale*z + shift),
    as weighted BCE with pos_weight and too many epochs make them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < expit(z)).astype(int)
    return labels, scale * z + shift


def test_temperature_equals_scikit_learn_logistic_regression_without_intercept():
    labels, logits = overconfident(2000, seed=0)
    calibrator = Calibrator.fit("temperature", labels, logits)
    reference = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-10, max_iter=1000)
    reference.fit(logits[:, None], labels)  # p = sigmoid(a * logit): a = 1 / T
    assert calibrator.temperature == pytest.approx(1.0 / reference.coef_[0, 0], rel=1e-4)
    np.testing.assert_allclose(calibrator(logits), reference.predict_proba(logits[:, None])[:, 1], atol=1e-5)


def test_platt_minimises_the_penalised_log_loss():
    """Against a direct minimisation (scipy, not scikit-learn) of C x log-loss + slope^2 / 2 (intercept free)."""
    from scipy.optimize import minimize
    from scipy.special import log_expit

    labels, logits = overconfident(600, seed=6)

    def loss(ab):
        z = ab[0] * logits + ab[1]
        return -PLATT_C * np.sum(labels * log_expit(z) + (1 - labels) * log_expit(-z)) + ab[0] ** 2 / 2

    reference = minimize(loss, [1.0, 0.0], method="BFGS", options={"gtol": 1e-8}).x
    calibrator = Calibrator.fit("platt", labels, logits)
    assert (calibrator.slope, calibrator.bias) == pytest.approx(tuple(reference), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(calibrator(logits), expit(reference[0] * logits + reference[1]), atol=1e-6)


def test_platt_undoes_the_shift_of_class_weighting_which_temperature_cannot():
    """Weighted BCE shifts every logit by about log(pos_weight): a shift without overconfidence."""
    val_labels, val_logits = overconfident(2000, seed=7, scale=1.0, shift=2.0)
    test_labels, test_logits = overconfident(2000, seed=8, scale=1.0, shift=2.0)
    ece = {method: expected_calibration_error(test_labels, Calibrator.fit(method, val_labels, val_logits)(test_logits))
           for method in ("none", "temperature", "platt")}
    assert ece["temperature"] > 0.1 and ece["none"] > 0.1, ece
    assert ece["platt"] < 0.03, ece


def test_platt_keeps_separable_scores_apart_where_temperature_saturates():
    labels = np.r_[np.zeros(10), np.ones(10)].astype(int)
    logits = np.r_[np.linspace(-30, -20, 10), np.linspace(20, 30, 10)]  # separable and far apart
    platt = Calibrator.fit("platt", labels, logits)(logits)
    assert len(np.unique(platt)) == len(logits) and platt.max() < 1.0 and platt.min() > 0.0
    assert np.all(np.diff(platt) > 0)  # the ranking is kept
    assert len(np.unique(Calibrator.fit("temperature", labels, logits)(logits))) < len(logits)  # ties at 0 and 1


def test_platt_never_reverses_a_ranking():
    """A score that ranks worse than chance on validation gets nearly its base rate, not a flipped map."""
    labels, logits = overconfident(300, seed=9)
    calibrator = Calibrator.fit("platt", labels, -logits)  # validation says: higher logit, fewer positives
    assert calibrator.slope == MIN_PLATT_SLOPE
    probs = calibrator(logits)
    assert roc_auc_score(labels, probs) == roc_auc_score(labels, logits)  # the model's own ranking is kept
    assert abs(probs.mean() - labels.mean()) < 0.02 and np.ptp(probs) < 0.25


def test_isotonic_equals_scikit_learn_on_new_scores():
    labels, logits = overconfident(800, seed=1)
    calibrator = Calibrator.fit("isotonic", labels, logits)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(expit(logits), labels)
    _, new = overconfident(500, seed=2, scale=6.0)  # scores past the fitted range are clipped too
    np.testing.assert_allclose(calibrator(new), reference.predict(expit(new)), atol=1e-12)


@pytest.mark.parametrize("method", ["platt", "temperature", "isotonic"])
def test_calibration_lowers_the_error_of_a_miscalibrated_model_on_held_out_data(method):
    val_labels, val_logits = overconfident(1500, seed=3)
    test_labels, test_logits = overconfident(1500, seed=4)
    calibrator = Calibrator.fit(method, val_labels, val_logits)
    before = calibration_metrics(test_labels, expit(test_logits))
    after = calibration_metrics(test_labels, calibrator(test_logits))
    assert after["ece"] < 0.6 * before["ece"] and after["brier"] < before["brier"], (before, after)
    if method != "isotonic":  # a positive scale (and a shift): the ranking, hence ROC-AUC, is unchanged
        assert roc_auc_score(test_labels, calibrator(test_logits)) == roc_auc_score(test_labels, test_logits)


def test_expected_calibration_error_by_hand():
    # two bins of 15 used: [0.0, 1/15) holds 0.05, 0.05 (labels 0, 1); [14/15, 1] holds 0.95, 1.0 (labels 1, 1)
    ece = expected_calibration_error([0, 1, 1, 1], [0.05, 0.05, 0.95, 1.0])
    assert ece == pytest.approx((2 / 4) * abs(0.5 - 0.05) + (2 / 4) * abs(1.0 - 0.975))
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_stored_calibration_is_checked():
    assert Calibrator.from_dict(None) == Calibrator()  # a checkpoint from before calibration
    for method in ("platt", "temperature", "isotonic"):
        fitted = Calibrator.fit(method, *overconfident(100, 5))
        assert Calibrator.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ArcmilError, match="unknown calibration"):
        Calibrator.from_dict({"method": "beta"})
    with pytest.raises(ArcmilError, match="finite slope > 0"):
        Calibrator.from_dict({"method": "platt", "slope": -1.0, "bias": 0.0})
    with pytest.raises(ArcmilError, match="needs matching knots"):
        Calibrator.from_dict({"method": "isotonic", "knots_x": [0.1, 0.2], "knots_y": [0.5]})


def test_checkpoint_round_trip_applies_the_calibrator(tmp_path):
    bags = make_demo_bags(n_bags=160, seed=3)
    clf = MILClassifier("attention_mil", epochs=3, hidden_dim=16, calibrate="isotonic", n_bootstrap=0).fit(bags)
    assert clf.calibrator_.method == "isotonic"
    clf.save(tmp_path / "m.pth")
    again = MILClassifier.load(tmp_path / "m.pth")
    np.testing.assert_array_equal(again.predict_proba(bags), clf.predict_proba(bags))
    raw = MILClassifier("attention_mil", epochs=3, hidden_dim=16, calibrate="none", n_bootstrap=0).fit(bags)
    assert not np.allclose(again.predict_proba(bags)[:, 1], raw.predict_proba(bags)[:, 1])  # same seed, calibrated


def test_train_reports_calibration_and_predict_applies_it(tmp_path):
    data = save_bags(make_demo_bags(n_bags=160, seed=4), tmp_path / "bags.npz")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "3", "--hidden-dim", "16",
                 "--n-bootstrap", "0", "--no-progress"]) == 0
    results = json.loads((out / "stage3_attention_mil_results.json").read_text())
    assert results["calibration"]["method"] == "platt"  # the default
    run_predictions = pd.read_csv(out / "predictions.csv")
    for section, split in (("validation", "val"), ("test", "test")):  # the reported numbers are the written scores'
        part = run_predictions.query("split == @split")
        assert results[section]["brier"] == pytest.approx(brier_score_loss(part.label, part.prob), abs=1e-9)
        assert results[section]["ece"] == pytest.approx(expected_calibration_error(part.label, part.prob), abs=1e-9)
    assert main(["predict", "--checkpoint", str(out / "best_attention_mil.pth"), "--data", str(data),
                 "--out", str(tmp_path / "p.csv")]) == 0
    scored = pd.read_csv(tmp_path / "p.csv").set_index("bag_id").loc[run_predictions.bag_id]
    np.testing.assert_allclose(scored["prob"], run_predictions["prob"], atol=1e-6)
    np.testing.assert_array_equal(scored["pred"], run_predictions["pred"])


@pytest.mark.parametrize("method", ["platt", "temperature", "none", "isotonic"])
def test_calibrated_logits_are_the_log_odds_of_the_calibrated_probabilities(method, rng):
    """Ensembles average in log space through calibrated_logits: it must be the same map as probabilities."""
    import torch

    from arcmil.calibration import LOGIT_FLOOR, fit_calibrator
    from arcmil.labels import LabelSpace

    logits = rng.normal(scale=3, size=(200, 3))
    labels = (logits + rng.normal(size=logits.shape) > 0).astype(int)
    binary = fit_calibrator(method, labels[:, 0], logits[:, 0])
    per_label = fit_calibrator(method, labels, logits, LabelSpace("multilabel", ("a", "b", "c")))
    z = torch.as_tensor(logits)
    for calibrator, x in ((binary, z[:, 0]), (per_label, z)):
        expected = calibrator.probabilities(x)
        if method == "isotonic":
            expected = expected.clamp(LOGIT_FLOOR, 1 - LOGIT_FLOOR)
        torch.testing.assert_close(torch.sigmoid(calibrator.calibrated_logits(x)), expected)
    if method != "isotonic":
        softmax = fit_calibrator(method, labels.argmax(1), logits, LabelSpace("multiclass", ("a", "b", "c")))
        torch.testing.assert_close(torch.softmax(softmax.calibrated_logits(z), -1), softmax.probabilities(z))
