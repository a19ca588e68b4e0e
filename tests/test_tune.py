"""Hyper-parameter search: the space each model searches, a search that never reads test bags (also
inside nested CV), resumed studies, and the tune / cv --tune / compare --tune commands end to end."""
import json
import re
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from test_resume import arcmil, kill_when

from arcmil.cli import main
from arcmil.cv import run_cv
from arcmil.data import assign_split, save_bags
from arcmil.data.prepare import cv_splits
from arcmil.demo import make_demo_bags
from arcmil.errors import ConfigError
from arcmil.pipeline import EvalConfig
from arcmil.settings import SearchConfig, resolve
from arcmil.train import TrainConfig
from arcmil.tune import run_search, search_bags, search_space, tuned_experiment

TINY_SPACE = {"epochs": {"low": 1, "high": 2}, "patience": None, "hidden_dim": {"choices": [8, 16]},
              "d_model": {"choices": [16, 32]}, "nhead": {"choices": [2]}, "num_layers": {"choices": [1]},
              "dim_feedforward": {"choices": [32]}}
QUICK = EvalConfig(n_bootstrap=0)
CFG = TrainConfig(seed=0, progress=False)


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return str(path)


def test_each_model_searches_what_it_has_and_the_yaml_overrides_it(tmp_path):
    assert {"lr", "weight_decay", "epochs", "patience", "hidden_dim", "dropout_p"} == set(search_space("attention_mil", {}))
    assert "gated" not in search_space("attention_mil_gated", {})  # the variant's preset is not searched
    topk, pooled = search_space("transformer_mil_topk", {}), search_space("transformer_mil", {})
    assert "k" in topk and "pooler_hidden" not in topk and "k" not in pooled and "pooler_hidden" in pooled
    assert "num_landmarks" in search_space("transmil_nystrom", {}) and "num_landmarks" not in search_space("transmil", {})
    assert "pooler_hidden" in search_space("transmil_dual", {}) and "attention" not in search_space("transmil_nystrom", {})
    # one attention per class is a choice only where there are classes, and only for an attention pooler
    assert "class_attention" not in search_space("attention_mil", {}) | search_space("transformer_mil", {})
    assert "class_attention" in search_space("attention_mil", {"n_outputs": 3})
    assert "class_attention" in search_space("transformer_mil", {"n_outputs": 3})
    assert "class_attention" not in search_space("transformer_mil_topk", {"n_outputs": 3})
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 0.001, high: 0.01, log: true}\npatience: null\nd_model: {choices: [32]}\n")
    space = search_space("attention_mil", {}, str(path))  # d_model: another model's setting, skipped
    assert space["lr"] == {"low": 0.001, "high": 0.01, "log": True} and "patience" not in space and "d_model" not in space
    for text, message in [("lr: {low: 0.1, high: 0.01}", "'lr' expects {low: L, high: H"),
                          ("lrr: {low: 0.1, high: 1}", "'lrr' is not a training or model setting (did you mean 'lr'?)"),
                          ("lr: [1, 2]", "'lr' expects")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            search_space("attention_mil", {}, str(path))


def test_a_space_file_never_searches_what_the_variant_fixes(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("pool: {choices: [attention, topk]}\ngated: {choices: [true, false]}\n")
    assert "pool" not in search_space("transformer_mil_topk", {}, str(path))  # topk is what the variant is
    assert search_space("transformer_mil", {}, str(path))["pool"] == {"choices": ["attention", "topk"]}
    assert "gated" not in search_space("attention_mil_gated", {}, str(path))
    assert "gated" in search_space("attention_mil", {}, str(path))


def test_the_pruner_spares_a_trial_its_first_two_epochs():
    """Trials report one step per finished epoch from step 0: a trial far below the median is first prunable
    at its third epoch."""
    from arcmil.tune import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    for _ in range(5):  # the pruner's n_startup_trials
        good = study.ask()
        for step in range(3):
            good.report(0.9, step)
        study.tell(good, 0.9)
    bad = study.ask()
    prunable = []
    for epoch in (1, 2, 3):
        bad.report(0.1, epoch - 1)
        prunable.append(bad.should_prune())
    assert prunable == [False, False, True]


def test_search_settings_resolve_and_refuse_nonsense():
    assert resolve("tune", {}).search == SearchConfig(trials=50)
    assert resolve("cv", {"trials": 5, "inner_folds": 3}).search == SearchConfig(trials=5, inner_folds=3)
    assert resolve("cv", {}).search is None and resolve("train", {}).search is None
    with pytest.raises(ConfigError, match="inner_folds set without a search"):
        resolve("cv", {"inner_folds": 3})
    with pytest.raises(ConfigError, match="trials must be at least 1"):
        resolve("tune", {"trials": 0})
    with pytest.raises(ConfigError, match="'trials' does not apply to arcmil train"):
        resolve("train", {"trials": 3})


def poisoned(bags, index):
    """The same bags with the windows of bags ``index`` replaced by large noise."""
    rng = np.random.default_rng(123)
    return bags.with_bags([rng.normal(0, 50, b.shape).astype(np.float32) if i in set(index) else b
                           for i, b in enumerate(bags.bags)])


@pytest.mark.parametrize("inner_folds", [None, 2])
def test_the_search_never_reads_the_test_part(space_file, inner_folds):
    bags = assign_split(make_demo_bags(n_bags=120, seed=5), seed=0)
    search = SearchConfig(trials=3, inner_folds=inner_folds, space=space_file)
    test = np.flatnonzero(bags.split == "test")

    def run(b):
        result, found = tuned_experiment(b, "attention_mil", CFG, QUICK, search, study_name="s")
        frame = found.study.trials_dataframe()
        return result, frame[[c for c in frame.columns if c.startswith(("params_", "value", "state"))]]

    clean_result, clean_trials = run(bags)
    dirty_result, dirty_trials = run(poisoned(bags, test))
    pd.testing.assert_frame_equal(clean_trials, dirty_trials)  # every trial: same parameters, same score
    assert len(clean_trials) == 3
    assert clean_result.test["roc_auc"] != dirty_result.test["roc_auc"]  # the test part was scored once, after
    assert len(search_bags(bags, 0)) == len(bags) - len(test)


def test_nested_cv_searches_each_fold_without_its_test_fold(space_file):
    bags = make_demo_bags(n_bags=90, seed=6)
    search = SearchConfig(trials=2, space=space_file)
    clean = run_cv(bags, "attention_mil", CFG, evaluation=QUICK, folds=3, search=search)
    # poison outer fold 0's test bags: fold 0's search must not change (other folds train on them)
    split = next(cv_splits(bags.labels, 3, [0], 0.2))[3]
    first_test = np.flatnonzero(split == "test")
    dirty = run_cv(poisoned(bags, first_test), "attention_mil", CFG, evaluation=QUICK, folds=3, search=search)
    assert clean.folds[0]["search"] == dirty.folds[0]["search"]
    assert clean.folds[0]["test"]["roc_auc"] != dirty.folds[0]["test"]["roc_auc"]
    rows = clean.fold_rows()
    assert all("search_roc_auc" in r and "tuned_lr" in r for r in rows)
    for record in clean.folds:  # each fold's final model (its tag) is trained with its search's best
        assert f"_h{record['search']['best_params']['hidden_dim']}_" in record["tag"]


def test_a_study_continues_where_it_stopped(tmp_path, space_file):
    bags = search_bags(make_demo_bags(n_bags=80, seed=7), 0)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = run_search(bags, "attention_mil", CFG, SearchConfig(trials=2, space=space_file), study_name="s",
                       storage=storage)
    before = [t.params for t in first.study.trials]
    study = optuna.load_study(study_name="s", storage=storage)
    study.ask()  # a trial left running by a killed process
    more = run_search(bags, "attention_mil", CFG, SearchConfig(trials=4, space=space_file), study_name="s",
                      storage=storage, fail_running=True)
    trials = more.study.trials
    assert [t.params for t in trials[:2]] == before and len(before) == 2
    assert [t.state.name for t in trials].count("FAIL") == 1
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4


def test_tune_writes_a_config_that_train_reads_and_resumes_after_a_kill(tmp_path, space_file):
    data = save_bags(make_demo_bags(n_bags=160, seed=8), tmp_path / "bags.npz")
    out = tmp_path / "tune"
    args = ["tune", "--data", data, "--trials", "6", "--space", space_file, "--n-bootstrap", "0", "--no-progress",
            "--out", out]

    def two_trials_done():
        try:
            return json.loads((out / "run_state.json").read_text()).get("trials_done", 0) >= 2
        except (OSError, ValueError):
            return False

    kill_when(args, two_trials_done)
    resumed = arcmil("tune", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(out / "trials.csv")
    assert (trials.state.isin(["COMPLETE", "PRUNED"])).sum() == 6
    assert trials.state.iloc[:2].tolist() == ["COMPLETE", "COMPLETE"]  # kept from before the kill
    for name in ("history.png", "importance.png", "best_config.yaml", "best/best_attention_mil.pth"):
        assert (out / name).stat().st_size > 0, name
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    results = json.loads((out / "best" / "stage3_attention_mil_results.json").read_text())
    assert results["model_config"]["hidden_dim"] == best["hidden_dim"] and results["train_config"]["lr"] == best["lr"]
    printed = arcmil("train", "--config", out / "best_config.yaml", "--print-config")
    assert printed.returncode == 0 and yaml.safe_load(printed.stdout) == best


def test_compare_and_cv_tune_end_to_end(tmp_path, space_file, capsys):
    data = save_bags(make_demo_bags(n_bags=120, seed=9), tmp_path / "bags.npz")
    common = ["--data", str(data), "--tune", "2", "--space", space_file, "--n-bootstrap", "0", "--no-progress"]
    assert main(["compare", "--models", "attention_mil,transmil", "--out", str(tmp_path / "cmp"), *common]) == 0
    summary = json.loads((tmp_path / "cmp" / "transmil" / "model_summary.json").read_text())
    assert summary["searches"][0]["n_trials"] == 2
    seed_run = json.loads(next((tmp_path / "cmp" / "transmil").rglob("stage3_transmil_results.json")).read_text())
    assert seed_run["model_config"]["d_model"] == summary["searches"][0]["best_params"]["d_model"]
    assert "each model tuned with 2 trials" in capsys.readouterr().out
    assert main(["cv", "--model", "attention_mil", "--folds", "3", "--repeats", "1", "--out", str(tmp_path / "cv"),
                 *common]) == 0
    folds = pd.read_csv(tmp_path / "cv" / "cv_folds.csv")
    assert len(folds) == 3
    for fold in folds.itertuples():  # each fold's final model (its tag) is trained with its search's best
        record = json.loads((tmp_path / "cv" / "folds" / f"r{fold.repeat}_f{fold.fold}.json").read_text())
        assert fold.tuned_hidden_dim == record["search"]["best_params"]["hidden_dim"]
        assert f"_h{fold.tuned_hidden_dim}_" in record["tag"]
    assert "nested CV" in capsys.readouterr().out


def test_a_search_without_optuna_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    data = save_bags(make_demo_bags(n_bags=60, seed=1), tmp_path / "bags.npz")
    assert main(["tune", "--data", str(data), "--trials", "1", "--out", str(tmp_path / "t")]) == 2
    assert "pip install 'arcmil[tune]'" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_a_search_refuses_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = save_bags(make_demo_bags(n_bags=60, seed=1), tmp_path / "bags.npz")
    assert main(["cv", "--data", str(data), "--tune", "2", "--folds", "3", "--out", str(tmp_path / "cv")]) == 2
    assert "not under torchrun" in capsys.readouterr().err and not (tmp_path / "cv").exists()


def test_trials_normalise_as_the_final_run_does(monkeypatch, space_file):
    import arcmil.tune as tune

    seen = []
    real = tune.train_run
    monkeypatch.setattr(tune, "train_run", lambda *a, **k: seen.append(k["evaluation"]) or real(*a, **k))
    bags = search_bags(make_demo_bags(n_bags=80, seed=2), 0)
    run_search(bags, "attention_mil", CFG, SearchConfig(trials=1, space=space_file), study_name="s",
               evaluation=EvalConfig(normalize="standardize", calibrate="isotonic"))
    assert [e.normalize for e in seen] == ["standardize"] and seen[0].calibrate == "none"
