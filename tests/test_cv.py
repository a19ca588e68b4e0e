import numpy as np
import pytest
from scipy import stats

from arcmil.cv import run_cv
from arcmil.data.prepare import cv_splits
from arcmil.errors import DataError
from arcmil.pipeline import EvalConfig
from arcmil.stats import mean_std, paired_test
from arcmil.train import TrainConfig


def test_folds_never_leak_the_test_fold():
    labels = np.array([0] * 30 + [1] * 20)
    seen_test = {0: [], 1: []}
    for repeat, fold, seed, split in cv_splits(labels, folds=5, seeds=[3, 4], val_fraction=0.25):
        assert set(np.unique(split)) == {"train", "val", "test"}
        test = np.flatnonzero(split == "test")
        seen_test[repeat].extend(test.tolist())
        # every split keeps both classes, stratified
        for part in ("train", "val", "test"):
            assert set(labels[split == part]) == {0, 1}
        assert (split == "val").sum() == pytest.approx(0.25 * (split != "test").sum(), abs=1)
    for repeat in (0, 1):  # each bag is tested exactly once per repeat
        assert sorted(seen_test[repeat]) == list(range(50))
    first = [s for r, _, _, s in cv_splits(labels, 5, [3, 4]) if r == 0]
    second = [s for r, _, _, s in cv_splits(labels, 5, [3, 4]) if r == 1]
    assert any(not np.array_equal(a, b) for a, b in zip(first, second)), "repeats reshuffle"


def test_run_cv_records_each_fold_and_uses_only_its_training_part(small_bags):
    cfg = TrainConfig(epochs=2, progress=False)
    result = run_cv(small_bags, "attention_mil", cfg, folds=3, seeds=[0], hidden_dim=16)
    assert len(result.folds) == 3
    assert sum(r["n_test"] for r in result.folds) == len(small_bags)
    for record in result.folds:
        assert record["n_train"] + record["n_val"] + record["n_test"] == len(small_bags)
        assert record["test"]["n"] == record["n_test"]
    accuracy = [r["test"]["accuracy"] for r in result.folds]
    assert result.summary["at_val_threshold"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracy))
    assert result.summary["at_val_threshold"]["accuracy"]["std"] == pytest.approx(np.std(accuracy, ddof=1))
    again = run_cv(small_bags, "attention_mil", cfg, folds=3, seeds=[0], hidden_dim=16)
    assert again.summary == result.summary
    # "at 0.5" is the fixed threshold 0.5 on the calibrated probabilities, as threshold_method fixed decides
    fixed = run_cv(small_bags, "attention_mil", cfg, evaluation=EvalConfig(threshold_method="fixed"), folds=3,
                   seeds=[0], hidden_dim=16)
    for record, fixed_record in zip(result.folds, fixed.folds):
        decisions = ("f1", "precision", "recall", "accuracy", "confusion_matrix")
        assert {k: fixed_record["test"][k] for k in decisions} == {k: record["test_at_0.5"][k] for k in decisions}


def test_cv_refuses_too_few_bags_per_class(small_bags):
    with pytest.raises(DataError, match="folds need at least"):
        run_cv(small_bags.subset(range(12)), "attention_mil", TrainConfig(progress=False), folds=10)


def test_plain_paired_test_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.random(8), rng.random(8)
    ours = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert ours["t"] == pytest.approx(ref.statistic) and ours["p_value"] == pytest.approx(ref.pvalue)


def test_corrected_test_inflates_the_variance():
    rng = np.random.default_rng(1)
    a = rng.random(50) + 0.05
    b = rng.random(50)
    plain, corrected = paired_test(a, b), paired_test(a, b, test_train_ratio=1 / 9)
    # Nadeau & Bengio: t shrinks by sqrt((1/n) / (1/n + n_test/n_train))
    assert corrected["t"] == pytest.approx(plain["t"] * np.sqrt((1 / 50) / (1 / 50 + 1 / 9)))
    assert corrected["p_value"] > plain["p_value"]
    assert corrected["test"].startswith("corrected")


def test_paired_test_edge_cases():
    assert paired_test([0.8, 0.8], [0.8, 0.8])["p_value"] == 1.0
    assert not paired_test([0.9], [0.1])["significant"]  # one run proves nothing
    # identical differences have no variance: not infinite evidence, but an exact sign test on their directions
    same = paired_test([0.9, 0.9], [0.88, 0.88])
    assert same["p_value"] == 0.5 and not same["significant"] and same["t"] is None and "sign test" in same["test"]
    near = paired_test([0.9, 0.8], [0.88, 0.78])  # equal up to float error (0.02 and 0.020000000000000018)
    assert near["p_value"] == 0.5 and not near["significant"]
    assert paired_test([0.9] * 10, [0.8] * 10)["p_value"] == pytest.approx(2 / 2**10)  # ten of ten agree
    assert paired_test([0.8] * 10, [0.9] * 10)["p_value"] == pytest.approx(2 / 2**10)
    assert mean_std([0.5, None, 0.7]) == {"mean": pytest.approx(0.6), "std": pytest.approx(np.std([0.5, 0.7], ddof=1)),
                                         "n": 2}
