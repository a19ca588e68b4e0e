"""Calibrated probabilities: fitted on validation, agreeing with scikit-learn, lowering the calibration
error of a miscalibrated model, and carried by checkpoints into predict and the Python API."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from arcmil import MILClassifier
from arcmil.calibration import Calibrator, calibration_metrics, expected_calibration_error
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


def test_isotonic_equals_scikit_learn_on_new_scores():
    labels, logits = overconfident(800, seed=1)
    calibrator = Calibrator.fit("isotonic", labels, logits)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(expit(logits), labels)
    _, new = overconfident(500, seed=2, scale=6.0)  # scores past the fitted range are clipped too
    np.testing.assert_allclose(calibrator(new), reference.predict(expit(new)), atol=1e-12)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_lowers_the_error_of_a_miscalibrated_model_on_held_out_data(method):
    val_labels, val_logits = overconfident(1500, seed=3)
    test_labels, test_logits = overconfident(1500, seed=4)
    calibrator = Calibrator.fit(method, val_labels, val_logits)
    before = calibration_metrics(test_labels, expit(test_logits))
    after = calibration_metrics(test_labels, calibrator(test_logits))
    assert after["ece"] < 0.6 * before["ece"] and after["brier"] < before["brier"], (before, after)
    if method == "temperature":  # one positive scale: the ranking, hence ROC-AUC, is unchanged
        assert roc_auc_score(test_labels, calibrator(test_logits)) == roc_auc_score(test_labels, test_logits)


def test_expected_calibration_error_by_hand():
    # two bins of 15 used: [0.0, 1/15) holds 0.05, 0.05 (labels 0, 1); [14/15, 1] holds 0.95, 1.0 (labels 1, 1)
    ece = expected_calibration_error([0, 1, 1, 1], [0.05, 0.05, 0.95, 1.0])
    assert ece == pytest.approx((2 / 4) * abs(0.5 - 0.05) + (2 / 4) * abs(1.0 - 0.975))
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_stored_calibration_is_checked():
    assert Calibrator.from_dict(None) == Calibrator()  # a checkpoint from before calibration
    assert Calibrator.from_dict(Calibrator.fit("temperature", *overconfident(100, 5)).to_dict()).method == "temperature"
    with pytest.raises(ArcmilError, match="unknown calibration"):
        Calibrator.from_dict({"method": "platt"})
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
    assert results["calibration"]["method"] == "temperature" and results["calibration"]["temperature"] > 0
    for section in ("validation", "test"):
        for key in ("brier", "ece", "brier_uncalibrated", "ece_uncalibrated"):
            assert 0.0 <= results[section][key] <= 1.0, (section, key)
    assert (out / "calibration.png").stat().st_size > 10_000
    run_predictions = pd.read_csv(out / "predictions.csv")
    assert main(["predict", "--checkpoint", str(out / "best_attention_mil.pth"), "--data", str(data),
                 "--out", str(tmp_path / "p.csv")]) == 0
    scored = pd.read_csv(tmp_path / "p.csv").set_index("bag_id").loc[run_predictions.bag_id]
    np.testing.assert_allclose(scored["prob"], run_predictions["prob"], atol=1e-6)
    np.testing.assert_array_equal(scored["pred"], run_predictions["pred"])
