import copy

import numpy as np
import pytest
import torch

from arcmil.data import make_loader
from arcmil.distributed import SINGLE, World
from arcmil.errors import ArcmilError
from arcmil.labels import BINARY
from arcmil.models import build_model
from arcmil.pipeline import prepare_data, run_experiment
from arcmil.runstate import rng_state, set_rng_state
from arcmil.scoring import evaluate
from arcmil.train import TrainConfig, seed_dropout_for_rank

FAST = dict(epochs=3, progress=False)


def test_binary_loss_weighs_positives_by_the_train_class_ratio():
    assert BINARY.criterion(np.array([1, 0, 0, 0])).pos_weight.item() == pytest.approx(3.0)


@pytest.mark.parametrize("name", ["attention_mil", "transmil"])
def test_same_seed_same_numbers(small_bags, name):
    a = run_experiment(small_bags, name, TrainConfig(seed=5, **FAST))
    b = run_experiment(small_bags, name, TrainConfig(seed=5, **FAST))
    assert a.test == b.test
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    np.testing.assert_array_equal(a.predictions["prob"], b.predictions["prob"])
    c = run_experiment(small_bags, name, TrainConfig(seed=6, **FAST))
    assert not np.array_equal(a.predictions["prob"], c.predictions["prob"])


@pytest.mark.parametrize("monitor,scores,best,run", [
    ("val_loss", [0.9, 0.7, 0.8, 0.75, 0.71, 0.5], 2, 5),  # best at 2, then 3 epochs without a lower loss: stop
    ("val_roc_auc", [0.6, 0.8, 0.8, 0.79, 0.9, 0.7, 0.7, 0.7], 5, 8),  # a tie is no improvement; best at 5
])
def test_patience_stops_on_a_plateau_at_the_right_epoch_and_keeps_the_best_state(small_bags, monkeypatch, monitor,
                                                                                  scores, best, run):
    import dataclasses

    import arcmil.train as train

    real_evaluate, epoch = train.evaluate, iter(range(len(scores)))

    def scripted(*args, **kwargs):  # the real scores, with the monitored value replaced by the script's
        ev = real_evaluate(*args, **kwargs)
        value = scores[next(epoch)]
        return dataclasses.replace(ev, loss=value) if monitor == "val_loss" else ev

    monkeypatch.setattr(train, "evaluate", scripted)
    if monitor == "val_roc_auc":
        script = iter(scores)
        monkeypatch.setattr(train, "_val_metrics", lambda val: {"val_loss": val.loss, "val_roc_auc": next(script),
                                                                "val_pr_auc": 0.5})
    states = {}
    cfg = TrainConfig(epochs=8, patience=3, monitor=monitor, progress=False)
    result = run_experiment(small_bags, "attention_mil", cfg, hidden_dim=16,
                            on_epoch=lambda s: states.update({s["epoch"]: copy.deepcopy(s["model"])}))
    assert result.best_epoch == best and len(result.history) == run and result.stopped_early == (run < cfg.epochs)
    assert [row[monitor] for row in result.history] == scores[:run]
    final = result.model.state_dict()
    assert all(torch.equal(final[k], states[best][k]) for k in final)  # the best epoch's weights, not the last


def test_plateau_schedule_follows_the_monitored_metric(small_bags):
    from arcmil.train import make_optimizer

    model = build_model("attention_mil", input_dim=small_bags.dim)
    for monitor, mode in (("val_loss", "min"), ("val_roc_auc", "max"), ("val_pr_auc", "max")):
        _, scheduler = make_optimizer(model, TrainConfig(lr_schedule="plateau", monitor=monitor), 10)
        assert scheduler.mode == mode
    cfg = TrainConfig(epochs=6, lr_schedule="plateau", lr_patience=0, patience=6, monitor="val_roc_auc", lr=1e-3,
                      progress=False)
    history = run_experiment(small_bags, "attention_mil", cfg, hidden_dim=16).history
    for before, after in zip(history, history[1:]):  # the rate halves after each epoch that did not raise the AUC
        best_so_far = max(row["val_roc_auc"] for row in history[:before["epoch"] - 1]) if before["epoch"] > 1 else -1
        improved = before["val_roc_auc"] > best_so_far * (1 + 1e-4)  # ReduceLROnPlateau's relative threshold
        assert after["lr"] == pytest.approx(before["lr"] * (1 if improved else 0.5)), (before, after)


def test_weight_decay_on_weights_only_spares_biases_norms_tokens_and_position_tables():
    from arcmil.train import decay_groups

    model = build_model("transmil", input_dim=8, d_model=16, nhead=2, dim_feedforward=32, pos_enc="learned")
    assert decay_groups(model, TrainConfig()) == [{"params": list(model.parameters())}]
    decayed, kept = decay_groups(model, TrainConfig(weight_decay_on="weights"))
    names = {id(p): name for name, p in model.named_parameters()}
    kept_names = {names[id(p)] for p in kept["params"]}
    assert kept["weight_decay"] == 0.0 and {"cls_token", "pos.table.weight", "norm.weight", "norm.bias",
                                            "proj.bias", "layers.0.norm1.weight"} <= kept_names
    assert {names[id(p)] for p in decayed["params"]} == {n for n, p in model.named_parameters()
                                                         if p.ndim == 2 and n != "pos.table.weight"}
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))


def test_a_diverging_run_stops_with_our_error(small_bags):
    with pytest.raises(ArcmilError, match=r"training diverged in epoch 1 .*lower the learning rate \(lr=1e\+30\)"):
        run_experiment(small_bags, "attention_mil", TrainConfig(lr=1e30, progress=False), hidden_dim=16)


def test_threshold_is_tuned_on_validation_only(small_bags):
    result = run_experiment(small_bags, "attention_mil", TrainConfig(**FAST))
    val = result.predictions[result.predictions.split == "val"]
    assert not np.isclose(val["prob"], result.threshold, rtol=0, atol=1e-9).any()  # between validation scores
    assert result.validation["f1"] >= max(
        ((val.prob >= t) & (val.label == 1)).sum() * 2 / ((val.prob >= t).sum() + val.label.sum()) for t in val.prob
    ) - 1e-12


def test_evaluate_is_in_eval_mode_and_restores_training_mode(small_bags):
    data = prepare_data(small_bags, TrainConfig())
    model = build_model("transmil", input_dim=small_bags.dim, dropout_p=0.5).train()
    loader = make_loader(data.parts["val"], 8)
    seen = []  # (inference mode, training flag) inside every forward call
    model.register_forward_hook(lambda m, args, out: seen.append((torch.is_inference_mode_enabled(), m.training)))
    first, second = evaluate(model, loader), evaluate(model, loader)
    np.testing.assert_array_equal(first.probs, second.probs)  # dropout off
    assert seen and set(seen) == {(True, False)}
    assert model.training
    assert all(abs(w.sum() - 1) < 1e-5 for w in first.weights)


def test_each_torchrun_rank_draws_its_own_dropout_masks():
    draws = {}
    for rank in (0, 1, 0):
        torch.manual_seed(0)  # what seed_everything leaves every rank with
        seed_dropout_for_rank(0, World(rank=rank, size=2))
        draws.setdefault(rank, []).append(torch.rand(8))
    torch.testing.assert_close(draws[0][0], draws[0][1])  # reproducible per rank
    assert not torch.equal(draws[0][0], draws[1][0])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    seed_dropout_for_rank(0, SINGLE)  # one process: its stream, and so every single-process result, unchanged
    assert torch.equal(torch.get_rng_state(), before)


def test_resume_state_carries_the_cuda_rng(monkeypatch):
    """On a GPU machine dropout draws from CUDA's generator: a resumed run must restore it too."""
    cuda_states, restored = [torch.tensor([1, 2, 3], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: cuda_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = rng_state()
    assert state["cuda"] is cuda_states
    set_rng_state(state)
    assert restored == [cuda_states]
    set_rng_state({**state, "cuda": []})  # a state saved without CUDA leaves the GPU generator alone
    assert len(restored) == 1


def test_progress_off_a_terminal_is_plain_log_lines(small_bags, capsys):
    run_experiment(small_bags, "attention_mil", TrainConfig(seed=0, epochs=2, progress=True))
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "it/s" not in err and "epoch/s" not in err  # no bar redraws
    assert [line.split()[2] for line in out.splitlines() if "] epoch" in line] == ["1", "2"]


def test_bucketed_training_of_uneven_bags_resumes_to_identical_numbers(small_bags):
    """Length bucketing is the default: its batches come from the loader's seeded generator, whose
    state the per-epoch resume state carries, so a resumed run repeats the uninterrupted one."""
    import copy

    bags = small_bags.with_bags([b[: 2 + i % 9] for i, b in enumerate(small_bags.bags)])  # 2-10 windows
    bags.instance_labels = None
    cfg = TrainConfig(seed=3, epochs=3, patience=3, progress=False)
    assert cfg.bucket_by_length
    states = []
    full = run_experiment(bags, "transmil", cfg, on_epoch=lambda state: states.append(copy.deepcopy(state)))
    resumed = run_experiment(bags, "transmil", cfg, resume=states[0])
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    np.testing.assert_array_equal(resumed.predictions["prob"], full.predictions["prob"])
    plain = run_experiment(bags, "transmil", TrainConfig(seed=3, epochs=3, patience=3, progress=False,
                                                         bucket_by_length=False))
    assert [r["val_loss"] for r in plain.history] != [r["val_loss"] for r in full.history]  # other batches


def test_training_bags_are_scored_only_when_asked(small_bags):
    """predictions holds the validation and test bags; ``score_train`` adds the training bags and changes
    nothing else (their scoring comes after every decision)."""
    from arcmil.config import EvalConfig

    default = run_experiment(small_bags, "attention_mil", TrainConfig(**FAST), hidden_dim=16)
    scored = run_experiment(small_bags, "attention_mil", TrainConfig(**FAST), hidden_dim=16,
                            evaluation=EvalConfig(score_train=True))
    assert list(default.predictions.split.unique()) == ["val", "test"] and "train" not in default.evaluations
    assert list(scored.predictions.split.unique()) == ["train", "val", "test"]
    assert (scored.predictions.split == "train").sum() == len(scored.parts["train"])
    held_out = scored.predictions[scored.predictions.split != "train"].reset_index(drop=True)
    assert held_out.equals(default.predictions) and scored.test == default.test and scored.threshold == default.threshold


@pytest.mark.parametrize("name", ["transformer_mil", "pooled_logistic"])
def test_the_best_epochs_validation_scores_are_the_final_models_own(small_bags, name):
    """finalize reuses the validation scores of the best epoch instead of scoring again: they must be
    exactly what the final (best-state) model scores, window weights and loss included."""
    from arcmil.pipeline import train_run
    from arcmil.scoring import score_bags

    trained = train_run(small_bags, name, TrainConfig(epochs=4, patience=4, progress=False))
    kept = trained.fit.best_val
    fresh = score_bags(trained.model, trained.data.parts["val"], trained.data.normalizer, device=trained.device,
                       criterion=trained.criterion)
    np.testing.assert_array_equal(kept.logits, fresh.logits)
    np.testing.assert_array_equal(kept.index, fresh.index)
    assert kept.loss == fresh.loss
    for a, b in zip(kept.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_compiled_runner_keeps_no_validation_scores(small_bags, monkeypatch):
    """Scores computed by another module than the model (compiled, DDP) are not the final model's own."""
    import arcmil.pipeline as pipeline

    monkeypatch.setattr(pipeline, "runner_for", lambda model, *args: copy.copy(model))
    trained = pipeline.train_run(small_bags, "attention_mil", TrainConfig(epochs=2, progress=False), hidden_dim=16)
    assert trained.fit.best_val is None


def test_validation_scores_of_other_bags_are_never_reused(small_bags):
    """A caller who validates on other bags (here the test part: the same count) gets the run's own
    validation bags scored for calibration and the threshold."""
    from arcmil.config import EvalConfig
    from arcmil.pipeline import finalize, make_loaders
    from arcmil.scoring import score_bags
    from arcmil.train import make_optimizer, train_model

    cfg = TrainConfig(epochs=2, progress=False)
    data = prepare_data(small_bags, cfg)
    assert len(data.parts["val"]) == len(data.parts["test"])
    loaders = make_loaders(data, cfg)
    torch.manual_seed(0)
    model = build_model("attention_mil", input_dim=small_bags.dim, hidden_dim=16)
    criterion = BINARY.criterion(data.parts["train"].labels)
    optimizer, scheduler = make_optimizer(model, cfg, len(loaders["train"]))
    fit = train_model(model, loaders["train"], loaders["test"], criterion, optimizer, scheduler, cfg, "cpu")
    assert fit.best_val is not None and fit.validation_scores(data.parts["val"], data.normalizer) is None
    assert fit.validation_scores(data.parts["test"], data.normalizer) is fit.best_val
    result = finalize("attention_mil", model, data, criterion, fit, cfg, EvalConfig(n_bootstrap=0), "cpu")
    own = score_bags(model, data.parts["val"], data.normalizer, criterion=criterion)
    np.testing.assert_array_equal(result.evaluations["val"].logits, own.logits)


def test_non_finite_test_scores_are_one_line_errors(small_bags, monkeypatch):
    """Scores that overflow on the test bags alone stop the run with one line (not scikit-learn's
    traceback from the metrics)."""
    import arcmil.pipeline as pipeline
    from arcmil.config import EvalConfig

    score_bags = pipeline.score_bags

    def overflowing_on_test(model, bags, *args, **kwargs):
        scored = score_bags(model, bags, *args, **kwargs)
        if set(bags.bag_ids) == test_ids:
            scored.logits[:3] = np.inf
        return scored

    test_ids = set(prepare_data(small_bags, TrainConfig()).parts["test"].bag_ids)  # the run's own split
    monkeypatch.setattr(pipeline, "score_bags", overflowing_on_test)
    with pytest.raises(ArcmilError, match=r"^the model's scores of 3 test bag\(s\) are not finite"):
        run_experiment(small_bags, "attention_mil", TrainConfig(epochs=1, progress=False), hidden_dim=16,
                       evaluation=EvalConfig(n_bootstrap=0))
