import numpy as np
import pytest
import torch

from arcmil.data import make_loader
from arcmil.distributed import SINGLE, World
from arcmil.models import build_model
from arcmil.pipeline import prepare_data, run_experiment
from arcmil.runstate import rng_state, set_rng_state
from arcmil.train import TrainConfig, evaluate, seed_dropout_for_rank, weighted_bce

FAST = dict(epochs=3, progress=False)


def test_weighted_bce_uses_train_class_ratio():
    assert weighted_bce(np.array([1, 0, 0, 0])).pos_weight.item() == pytest.approx(3.0)


@pytest.mark.parametrize("name", ["attention_mil", "transmil"])
def test_same_seed_same_numbers(small_bags, name):
    a = run_experiment(small_bags, name, TrainConfig(seed=5, **FAST))
    b = run_experiment(small_bags, name, TrainConfig(seed=5, **FAST))
    assert a.test == b.test
    assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
    np.testing.assert_array_equal(a.predictions["prob"], b.predictions["prob"])
    c = run_experiment(small_bags, name, TrainConfig(seed=6, **FAST))
    assert not np.array_equal(a.predictions["prob"], c.predictions["prob"])


def test_early_stopping_keeps_the_best_state(small_bags):
    cfg = TrainConfig(epochs=8, patience=2, lr=3e-3, progress=False)
    result = run_experiment(small_bags, "transformer_mil", cfg, d_model=32, nhead=2, dim_feedforward=64)
    history = result.history
    losses = [row["val_loss"] for row in history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert len(history) <= cfg.epochs
    if result.stopped_early:
        assert len(history) - result.best_epoch == cfg.patience
    # the restored model reproduces the best epoch's validation loss
    assert result.validation["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_threshold_is_tuned_on_validation_only(small_bags):
    result = run_experiment(small_bags, "attention_mil", TrainConfig(**FAST))
    val = result.predictions[result.predictions.split == "val"]
    assert np.isclose(val["prob"], result.threshold, rtol=0, atol=1e-12).any()  # one of the validation scores
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
