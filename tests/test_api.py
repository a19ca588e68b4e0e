"""The Python API: the README's example runs as written; the estimator behaves like scikit-learn's."""
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from arcmil import MILClassifier
from arcmil.demo import make_demo_bags
from arcmil.errors import ArcmilError, ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Experiment scripts and Python API")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    bags, windows = namespace["bags"], namespace["windows"]
    assert namespace["probs"].shape == (len(bags),) and set(np.unique(namespace["labels"])) <= {0, 1}
    assert len(windows) == int(bags.lengths[:3].sum())  # one row per window of the three explained bags
    np.testing.assert_allclose(windows.groupby("bag_id")["weights"].sum(), 1.0, rtol=1e-5)


def test_estimator_on_arrays_agrees_with_its_checkpoint(tmp_path):
    demo = make_demo_bags(n_bags=200, seed=2)
    X, y = [np.asarray(b) for b in demo.bags], demo.labels
    clf = MILClassifier(epochs=3, hidden_dim=32)
    assert clf.get_params() == {"model": "attention_mil", "epochs": 3, "hidden_dim": 32}
    assert clf.fit(X, y) is clf
    proba = clf.predict_proba(X)
    assert proba.shape == (200, 2) and len(np.unique(proba[:, 1])) == 200  # one score per bag, not a constant
    np.testing.assert_array_equal(clf.predict(X), proba[:, 1] >= clf.threshold_)
    assert clf.score(X, y) == accuracy_score(y, clf.predict(X))
    with pytest.raises(ArcmilError, match="embedding dimension 5 does not match the model"):
        clf.predict_proba([np.zeros((3, 5), np.float32)])
    clf.save(tmp_path / "m.pth")
    loaded = MILClassifier.load(tmp_path / "m.pth")
    np.testing.assert_allclose(loaded.predict_proba(X), proba, rtol=1e-6)
    assert loaded.results_["test"]["roc_auc"] == clf.results_["test"]["roc_auc"]  # the run's results, as after fit
    assert [row["val_loss"] for row in loaded.results_["history"]] == [row["val_loss"] for row in clf.results_["history"]]


def test_estimator_errors_are_clear():
    with pytest.raises(ConfigError, match="not fitted"):
        MILClassifier().predict_proba([np.zeros((2, 4), np.float32)])
    with pytest.raises(ConfigError, match="hidden_dimm"):
        MILClassifier(hidden_dimm=3).fit(make_demo_bags(n_bags=60))
    with pytest.raises(ArcmilError, match="missing required labels"):
        MILClassifier().fit([np.zeros((2, 4), np.float32)] * 10)
