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
from arcmil.models.fisher import POWER_SMOOTHING
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


def _fisher_reference(bag: np.ndarray, model) -> np.ndarray:
    """The normalised Fisher vector of one bag in float64 numpy, window by window (Perronnin et al. 2010)."""
    w, mu, var = (t.double().numpy() for t in (model.log_weights.exp(), model.means, model.variances))
    x = bag.astype(np.float64)
    log_p = np.log(w) - 0.5 * np.log(2 * np.pi * var).sum(1) - 0.5 * ((x[:, None] - mu) ** 2 / var).sum(-1)
    gamma = np.exp(log_p - log_p.max(1, keepdims=True))
    gamma /= gamma.sum(1, keepdims=True)  # (N, C)
    u = (x[:, None] - mu) / np.sqrt(var)  # (N, C, D)
    d_mean = (gamma[..., None] * u).sum(0) / (len(x) * np.sqrt(w)[:, None])
    d_std = (gamma[..., None] * (u ** 2 - 1)).sum(0) / (len(x) * np.sqrt(2 * w)[:, None])
    raw = np.concatenate([d_mean, d_std]).ravel()
    power = np.sign(raw) * (np.sqrt(np.abs(raw) + POWER_SMOOTHING) - np.sqrt(POWER_SMOOTHING))
    return power / np.linalg.norm(power)


def test_the_fisher_vector_is_the_mixtures_gradient_whatever_the_padding(rng):
    model = build_model("fisher_vector", input_dim=5, n_components=3)
    bags = [rng.normal(size=(rng.integers(2, 9), 5)).astype(np.float32) + (i % 2) for i in range(30)]
    model.fit_mixture(np.concatenate(bags))
    assert model.log_weights.exp().sum().item() == pytest.approx(1.0, abs=1e-5) and (model.variances > 0).all()
    x = torch.full((3, 9, 5), float("nan"))  # padding of any value adds nothing
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, bag in enumerate(bags[:3]):
        x[i, :len(bag)], mask[i, :len(bag)] = torch.as_tensor(bag), True
    encoded = model.encode(x, mask).numpy()
    for i, bag in enumerate(bags[:3]):
        np.testing.assert_allclose(encoded[i], _fisher_reference(bag, model), atol=1e-5)
    features = np.stack([model.encode(torch.as_tensor(b)[None], torch.ones(1, len(b), dtype=torch.bool))[0].numpy()
                         for b in bags])
    model.fit_features(features, np.arange(30) % 2, "binary")
    logits, weights = model(x, mask)
    alone = torch.stack([model(torch.as_tensor(b)[None])[0][0] for b in bags[:3]])
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert (weights[~mask] == 0).all() and torch.isfinite(weights).all()


def _window_terms_reference(bag: np.ndarray, model) -> np.ndarray:
    """(N,) each window's term of the bag's score minus its constant, float64 numpy: the score is
    coef / scale . f with f = r * raw, raw the mean of per-window gradients, r = f / raw within the bag."""
    w, mu, var = (t.double().numpy() for t in (model.log_weights.exp(), model.means, model.variances))
    x = bag.astype(np.float64)
    log_p = np.log(w) - 0.5 * np.log(2 * np.pi * var).sum(1) - 0.5 * ((x[:, None] - mu) ** 2 / var).sum(-1)
    gamma = np.exp(log_p - log_p.max(1, keepdims=True))
    gamma /= gamma.sum(1, keepdims=True)
    u = (x[:, None] - mu) / np.sqrt(var)  # (N, C, D)
    per_window = np.concatenate([gamma[..., None] * u / np.sqrt(w)[:, None],
                                 gamma[..., None] * (u ** 2 - 1) / np.sqrt(2 * w)[:, None]], axis=1)  # (N, 2C, D)
    per_window = per_window.reshape(len(x), -1) / len(x)
    raw = per_window.sum(0)
    ratio = _fisher_reference(bag, model) / raw
    return per_window @ (ratio * model.coef[0].double().numpy() / model.scale.double().numpy())


def test_fisher_weights_are_each_windows_share_of_the_linear_score(rng):
    model = build_model("fisher_vector", input_dim=4, n_components=2)
    bags = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(30)]
    model.fit_mixture(np.concatenate(bags))
    features = np.stack([model.encode(torch.as_tensor(b)[None], torch.ones(1, 6, dtype=torch.bool))[0].numpy()
                         for b in bags])
    model.fit_features(features, np.arange(30) % 2, "binary")
    logits, weights = model(torch.as_tensor(np.stack(bags[:4])), torch.ones(4, 6, dtype=torch.bool))
    offset = (model.intercept[0] - (model.coef[0] * model.center / model.scale).sum()).item()
    for i, bag in enumerate(bags[:4]):
        terms = _window_terms_reference(bag, model)
        assert terms.sum() + offset == pytest.approx(logits[i].item(), abs=1e-4)  # the terms make the score
        np.testing.assert_allclose(weights[i].numpy(), np.abs(terms) / np.abs(terms).sum(), atol=1e-5)


def test_a_mixture_needs_as_many_training_windows_as_components():
    from arcmil.errors import ArcmilError

    with pytest.raises(ArcmilError, match="mixture of 8 components needs at least as many training windows, got 5"):
        build_model("fisher_vector", input_dim=3, n_components=8).fit_mixture(np.zeros((5, 3)))


def test_the_mixture_sample_is_seeded_uniform_and_bounded():
    from types import SimpleNamespace

    from arcmil.models.pooled_stats import sample_windows

    windows = np.arange(1000, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)
    batches = [SimpleNamespace(x=torch.as_tensor(windows[i:i + 100])[None], mask=torch.ones(1, 100, dtype=torch.bool))
               for i in range(0, 1000, 100)]
    batches[-1].mask[0, -5:] = False  # padding is never sampled
    sample = sample_windows(batches, 100)
    assert sample.shape == (100, 2) and len(np.unique(sample[:, 0])) == 100
    assert np.all(np.diff(sample[:, 0]) > 0) and sample[:, 0].max() < 995  # reading order, real windows only
    np.testing.assert_array_equal(sample, sample_windows(batches, 100))
    assert 300 < sample[:, 0].mean() < 700  # drawn from the whole set, not its first batches
    assert len(sample_windows(batches, 5000)) == 995


def test_a_stats_model_keeps_the_buffers_of_earlier_checkpoints():
    """Checkpoints of pooled_* saved before the fisher encoding existed load into today's model (strict)."""
    state = build_model("pooled_svm", input_dim=3).state_dict()
    assert set(state) == {"center", "scale", "coef", "support", "dual_coef", "intercept"}


def test_the_fisher_encoding_is_searched_by_its_components_and_classified_linearly():
    from arcmil.errors import ConfigError
    from arcmil.models.config import PooledStatsConfig

    assert set(search_space("fisher_vector", {})) == {"C", "n_components"}
    assert "n_components" not in search_space("pooled_logistic", {})
    with pytest.raises(ConfigError, match="defined by classifier='logistic'"):
        build_model("fisher_vector", classifier="svm")
    with pytest.raises(ConfigError, match="classified linearly"):
        PooledStatsConfig(encoding="fisher", classifier="svm")
    with pytest.raises(ConfigError, match="defined by encoding='stats'"):
        build_model("pooled_svm", encoding="fisher")
    assert build_model("fisher_vector", n_components=4, C=0.5).config.tag() == "fisher_vector_k4_C0.5"


def test_a_fisher_vector_model_trains_predicts_and_exports(tmp_path):
    data = save_bags(make_task("sparse_presence", n_bags=300, dim=16, seed=1), tmp_path / "presence.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "fisher_vector", "--data", str(data), "--out", str(run), "--n-components", "3",
                 *FAST]) == 0
    model, meta = load_checkpoint(run / "best_fisher_vector.pth")  # the mixture travels as buffers
    assert model.means.shape == (3, 16) and meta["model_config"]["n_components"] == 3
    assert pd.read_csv(run / "stage3_fisher_vector_results.csv").iloc[0]["test_roc_auc"] > 0.7
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(run / "best_fisher_vector.pth"), "--out", str(graph)]) == 0
    assert main(["predict", "--checkpoint", str(graph), "--data", str(data), "--out", str(tmp_path / "o.csv")]) == 0
    split = pd.read_csv(run / "predictions.csv").merge(pd.read_csv(tmp_path / "o.csv"), on="bag_id",
                                                        suffixes=("_run", "_onnx"))
    np.testing.assert_allclose(split["prob_run"], split["prob_onnx"], atol=1e-4)
