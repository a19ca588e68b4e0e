import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fitted_pooled
from sklearn.metrics import roc_auc_score

from arcmil.data import Normalizer, scoring_loader
from arcmil.explain import explain_bags, integrated_gradients, localisation_auc, occlusion
from arcmil.models import build_model, model_names
from arcmil.models.registry import fitted_by_estimator
from arcmil.scoring import evaluate


def small_model(name):
    if fitted_by_estimator(name):  # a classical model: fitted, not initialised
        return fitted_pooled(name, 8)
    torch.manual_seed(0)
    cfg = {"input_dim": 8}
    cfg.update({"d_model": 16, "nhead": 2, "dim_feedforward": 32} if name.startswith("trans") else {"hidden_dim": 16})
    return build_model(name, **cfg).eval()


def test_occluding_the_decisive_window_changes_the_logit():
    """instance_max: only the arg-max window decides; removing it drops the logit to the runner-up."""
    model = small_model("instance_max")
    x = torch.randn(6, 8)
    with torch.no_grad():
        scores = model.max_pool.score(model.embed(x)).squeeze(-1)
    drops = occlusion(model, x)
    top, second = scores.topk(2).values
    decisive = int(scores.argmax())
    assert drops[decisive] == pytest.approx(float(top - second), abs=1e-5)
    others = torch.ones(6, dtype=torch.bool)
    others[decisive] = False
    assert torch.allclose(drops[others], torch.zeros(5), atol=1e-6)


def test_occlusion_matches_removing_the_window_by_hand():
    # masking a window out equals deleting it, positions included (they count real windows only)
    model = build_model("transmil", input_dim=8, d_model=16, nhead=2, dim_feedforward=32).eval()
    x = torch.randn(5, 8)
    drops = occlusion(model, x, chunk=2)  # chunking must not change anything
    with torch.no_grad():
        full = model(x[None])[0]
        by_hand = torch.stack([full - model(torch.cat([x[:i], x[i + 1:]])[None])[0] for i in range(5)]).squeeze(-1)
    torch.testing.assert_close(drops, by_hand, atol=1e-5, rtol=1e-5)
    assert torch.isnan(occlusion(model, x[:1])).all()


@pytest.mark.parametrize("name", model_names())
def test_integrated_gradients_completeness(name):
    model = small_model(name)
    x = torch.randn(7, 8)
    attributions = integrated_gradients(model, x, steps=256, chunk=100)
    with torch.no_grad():
        gap = model(x[None])[0] - model(torch.zeros_like(x)[None])[0]
    assert attributions.shape == (7,)
    assert attributions.sum().item() == pytest.approx(gap.item(), abs=2e-3 + 1e-2 * abs(gap.item()))


def test_localisation_auc_matches_scikit_learn():
    frame = pd.DataFrame({
        "bag_id": ["a"] * 4 + ["b"] * 3 + ["c"] * 3, "label": [1] * 7 + [0] * 3,
        "instance_label": [0, 1, 0, 0, 1, 1, 0, 0, 0, 0],
        "weights": [0.1, 0.6, 0.2, 0.1, 0.3, 0.5, 0.2, 0.3, 0.3, 0.4],
    })
    scores = localisation_auc(frame, ["weights"])["weights"]
    positive = frame[frame.label == 1]
    assert scores["pooled"] == pytest.approx(roc_auc_score(positive.instance_label, positive.weights))
    assert scores["per_bag_mean"] == pytest.approx(1.0) and scores["n_bags"] == 2


def test_explain_bags_rows(small_bags):
    model = build_model("attention_mil", input_dim=small_bags.dim).eval()
    part = small_bags.subset(range(5))
    frame = explain_bags(model, part, steps=8)
    assert len(frame) == int(part.lengths.sum())
    assert list(frame.columns) == ["bag_id", "window", "label", "instance_label", "prob", "weights", "occlusion",
                                   "integrated_gradients"]
    np.testing.assert_allclose(frame.groupby("bag_id")["weights"].sum(), 1.0, rtol=1e-5)


def test_explain_normalises_each_bag_as_scoring_does(small_bags):
    torch.manual_seed(0)
    model = build_model("transmil", input_dim=small_bags.dim, d_model=16, nhead=2, dim_feedforward=32).eval()
    part = small_bags.subset(range(6))
    normalizer = Normalizer.fit("standardize", part)
    frame = explain_bags(model, part, ["weights", "occlusion"], normalizer=normalizer)
    scored = evaluate(model, scoring_loader(part, 4, normalizer))
    np.testing.assert_allclose(frame.groupby("bag_id", sort=False)["prob"].first(), scored.probs, rtol=1e-6)
    x = normalizer.apply(torch.from_numpy(np.asarray(part.bags[2], np.float32)))
    np.testing.assert_allclose(frame[frame.bag_id == part.bag_ids[2]]["occlusion"], occlusion(model, x).numpy(),
                               rtol=1e-5, atol=1e-6)
