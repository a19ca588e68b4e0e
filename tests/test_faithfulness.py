"""Faithfulness of explanations: deletion curves by construction, and a task where the truth is known."""
import numpy as np
import pytest
import torch

from arcmil.explain import explain_bags
from arcmil.faithfulness import (
    FRACTIONS,
    aopc,
    bag_faithfulness,
    deletion_curves,
    faithfulness_frame,
    removed_counts,
    summarize,
)
from arcmil.models import build_model
from arcmil.pipeline import EvalConfig, run_experiment
from arcmil.tasks import make_task
from arcmil.train import TrainConfig


def test_curves_remove_up_to_half_the_bag_and_never_all_of_it():
    assert len(FRACTIONS) == 11 and FRACTIONS[0] == 0.0 and FRACTIONS[-1] == 0.5
    assert removed_counts(12).tolist() == [0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6]
    assert removed_counts(1).tolist() == [0] * 11 and removed_counts(2).max() == 1


@pytest.mark.parametrize("name", ["attention_mil", "transformer_mil"])
def test_a_deletion_curve_is_the_logit_of_the_bag_without_its_top_windows(name):
    torch.manual_seed(0)
    cfg = {"d_model": 16, "nhead": 2, "dim_feedforward": 32} if name.startswith("trans") else {"hidden_dim": 16}
    model = build_model(name, input_dim=8, n_outputs=3, **cfg).eval()
    x, order = torch.randn(9, 8), np.array([4, 0, 8, 2, 6, 1, 3, 5, 7])
    drops = deletion_curves(model, x, order[None], output=1)[0]
    with torch.no_grad():
        whole = model(x[None])[0][0, 1]
        for k, drop in zip(removed_counts(9), drops):
            keep = np.sort(order[k:])
            assert drop == pytest.approx(float(whole - model(x[None, keep])[0][0, 1]), abs=1e-5)
    assert aopc(drops[None])[0] == pytest.approx(drops.mean())


@pytest.fixture(scope="module")
def presence_run():
    """AttentionMIL trained on documents that are positive when a witness window is present."""
    bags = make_task("sparse_presence", n_bags=400, dim=32, seed=0)
    result = run_experiment(bags, "attention_mil", TrainConfig(seed=0, epochs=15, progress=False),
                            evaluation=EvalConfig(n_bootstrap=0))
    assert result.test["roc_auc"] > 0.95  # it has learned the task: its explanations can be judged
    return result


def test_on_a_presence_task_weights_and_gradients_beat_random_and_a_shuffled_ranking_does_not(presence_run):
    result = presence_run
    test = result.parts["test"]
    positive = test.subset(np.flatnonzero(test.labels == 1))
    frame = explain_bags(result.model, positive, ["weights", "integrated_gradients"], normalizer=result.normalizer,
                         steps=16)
    rng = np.random.default_rng(0)
    frame["shuffled"] = frame.groupby("bag_id")["weights"].transform(lambda w: rng.permutation(w.to_numpy()))
    methods = ["weights", "integrated_gradients", "shuffled"]
    per_bag, curves = faithfulness_frame(result.model, positive, frame, methods, result.normalizer)
    pooled = summarize(per_bag, curves)["methods"]
    scale = per_bag["aopc_random"].abs().mean() + per_bag["aopc"].abs().mean()  # the logit drops' own size
    for method in ("weights", "integrated_gradients"):  # the witness removed first: the logit falls at once
        assert pooled[method]["aopcr"] > 0.25 * scale and pooled[method]["beats_random"] >= 0.8, method
    # a ranking that knows nothing is chance: within a fifth of the informed rankings' margin over it
    assert abs(pooled["shuffled"]["aopcr"]) < 0.2 * pooled["weights"]["aopcr"]


def test_one_bag_scores_each_method_against_the_same_random_orders():
    torch.manual_seed(0)
    model = build_model("attention_mil", input_dim=8, hidden_dim=16).eval()
    x = torch.randn(10, 8)
    importance = np.arange(10.0)
    scores, curves = bag_faithfulness(model, x, {"up": importance, "down": -importance}, seed=3)
    assert scores["up"]["aopc_random"] == scores["down"]["aopc_random"]
    again, _ = bag_faithfulness(model, x, {"up": importance}, seed=3)
    assert again["up"] == scores["up"]  # seeded random orders
    np.testing.assert_allclose(curves["up"], deletion_curves(model, x, np.argsort(-importance)[None])[0], atol=1e-6)
