import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score, roc_curve

from arcmil import metrics
from arcmil.metrics import binary_metrics, bootstrap_ci, tune_threshold


def scored(rng, n=80, ties=True):
    y = rng.integers(0, 2, n)
    s = rng.random(n) * 0.6 + y * 0.3
    return y, (np.round(s, 1) if ties else s)  # rounding creates many tied scores


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [True, False])
def test_f1_threshold_matches_brute_force(seed, ties):
    y, s = scored(np.random.default_rng(seed), ties=ties)
    best = max(f1_score(y, s >= t) for t in np.unique(s))
    t = tune_threshold(y, s, "f1")
    assert f1_score(y, s >= t) == pytest.approx(best)
    assert_halfway_between_scores(t, s)


def assert_halfway_between_scores(t, s):
    """A tuned threshold lies on no score: halfway between its neighbours among the distinct scores."""
    distinct = np.unique(np.r_[0.0, s])
    assert t not in set(s)
    above, below = distinct[distinct > t].min(), distinct[distinct < t].max()
    assert t == pytest.approx((above + below) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_matches_brute_force(seed):
    y, s = scored(np.random.default_rng(seed))

    def youden(t):
        pred = s >= t
        return pred[y == 1].mean() - pred[y == 0].mean()

    best = max(youden(t) for t in np.unique(s))
    t = tune_threshold(y, s, "youden")
    assert youden(t) == pytest.approx(best)
    assert_halfway_between_scores(t, s)


def test_threshold_below_the_lowest_score_and_on_separable_scores():
    # every bag positive is best when the lowest score is a positive: halfway to 0
    assert tune_threshold([1, 0, 1], [0.2, 0.4, 0.9], "f1") == pytest.approx(0.1)
    # separable: the cut sits between the highest negative and the lowest positive, not on 0.8
    assert tune_threshold([0, 0, 1, 1], [0.1, 0.3, 0.8, 0.95], "f1") == pytest.approx(0.55)


def test_fixed_and_unknown_methods():
    assert tune_threshold([0, 1], [0.2, 0.9], "fixed", fixed=0.3) == 0.3
    with pytest.raises(ValueError, match="unknown threshold method"):
        tune_threshold([0, 1], [0.2, 0.9], "median")


def test_metrics_agree_with_hand_counts(rng):
    y, s = scored(rng, ties=False)
    m = binary_metrics(y, s, 0.5)
    pred = s >= 0.5
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert m["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s)
    assert m["roc_auc"] == pytest.approx(np.trapezoid(tpr, fpr))


def test_auc_is_none_for_one_class():
    m = binary_metrics([1, 1, 1], [0.2, 0.5, 0.9], 0.5)
    assert m["roc_auc"] is None and m["recall"] == pytest.approx(2 / 3)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded(rng):
    y, s = scored(rng, n=200, ties=False)
    ci = bootstrap_ci(y, s, 0.5, n_boot=300, seed=4)
    low, high = ci["roc_auc"]
    assert low < roc_auc_score(y, s) < high
    assert ci["f1"][0] < f1_score(y, s >= 0.5) < ci["f1"][1]
    assert bootstrap_ci(y, s, 0.5, n_boot=300, seed=4) == ci


@pytest.mark.parametrize("ties,chunk_elements", [(False, None), (True, None), (True, 1000)])
def test_bootstrap_equals_scikit_learn_on_every_resample(rng, ties, chunk_elements, monkeypatch):
    """The vectorised intervals are those of scikit-learn's roc_auc_score and f1_score called per
    resample (the same resamples: one seeded stream), however the resamples are chunked."""
    if chunk_elements:
        monkeypatch.setattr(metrics, "BOOTSTRAP_ELEMENTS", chunk_elements)  # 6 resamples per chunk
    y, s = scored(rng, n=150, ties=ties)
    y[:140] = 0  # few positives: some resamples draw one class and are skipped for ROC-AUC
    draw = np.random.default_rng(7)
    aucs, f1s = [], []
    for _ in range(400):
        i = draw.integers(0, len(y), len(y))
        f1s.append(f1_score(y[i], s[i] >= 0.5, zero_division=0))
        if len(np.unique(y[i])) == 2:
            aucs.append(roc_auc_score(y[i], s[i]))
    assert len(aucs) < 400
    ci = bootstrap_ci(y, s, 0.5, n_boot=400, seed=7)
    np.testing.assert_allclose(ci["roc_auc"], np.percentile(aucs, [2.5, 97.5]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ci["f1"], np.percentile(f1s, [2.5, 97.5]), rtol=0, atol=1e-12)


def test_bootstrap_refuses_scores_that_have_no_rank(rng):
    y, s = scored(rng, n=50, ties=False)
    s[3] = np.nan
    with pytest.raises(ValueError, match="1 scores are not finite"):
        bootstrap_ci(y, s, 0.5, n_boot=10)
