"""The shared run: one resolved config per command that config.yaml records whole, resume that refuses
changed data, and the pre-flight checks and trackers that train, compare and cv now share."""
import dataclasses

import pytest
import yaml

from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags
from arcmil.errors import ArcmilError, ConfigError
from arcmil.models import make_config
from arcmil.pipeline import EvalConfig
from arcmil.run import Run
from arcmil.settings import resolve
from arcmil.train import TrainConfig

FAST = ["--epochs", "2", "--n-bootstrap", "0", "--no-progress", "--hidden-dim", "16"]


@pytest.mark.parametrize("command,settings", [
    ("train", {"model": "transmil", "d_model": 32, "lr": 1e-3}),
    ("compare", {"models": "attention_mil,transmil", "seeds": "3,4", "d_model": 32, "epochs": 3}),
    ("cv", {"model": "transformer_mil_topk", "folds": 4, "repeats": 2, "seed": 7, "threshold_method": "youden"}),
    ("cv", {"model": "attention_mil", "trials": 4, "inner_folds": 3, "calibrate": "isotonic"}),
    ("tune", {"model": "transmil_nystrom", "trials": 7, "timeout": 60.0, "storage": "sqlite:///x.db"}),
])
def test_config_yaml_holds_every_setting_and_reads_back_to_the_same_run(command, settings):
    config = resolve(command, settings)
    written = yaml.safe_load(config.to_yaml())
    assert resolve(command, written) == config
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(written), "every training default is written"
    assert {f.name for f in dataclasses.fields(EvalConfig)} <= set(written), "every evaluation default is written"
    if command != "compare":  # one model: its whole config, defaults included
        model_fields = {f.name for f in dataclasses.fields(make_config(config.model))} - {"input_dim"}
        assert model_fields <= set(written)
    assert written["data"] is None and written["tracker"] is None


def test_run_keys_resolve_per_command():
    assert resolve("cv", {"seed": 7, "repeats": 3}).seeds == (7, 8, 9)
    assert resolve("cv", {}).folds == 10 and resolve("compare", {}).folds is None
    compare = resolve("compare", {"models": "attention_mil, instance_max", "hidden_dim": 16})
    assert compare.models == ("attention_mil", "instance_max") and compare.seeds == (0,)
    assert compare.overrides("instance_max") == {"hidden_dim": 16}
    with pytest.raises(ConfigError, match="'folds' does not apply to arcmil train"):
        resolve("train", {"folds": 5})
    with pytest.raises(ConfigError, match="seeds expects comma-separated integers"):
        resolve("compare", {"seeds": "0,x"})


def test_evaluation_settings_are_their_own_config():
    config = resolve("train", {"threshold_method": "fixed", "fixed_threshold": 0.3, "normalize": "none", "lr": 1e-3})
    assert config.evaluation == EvalConfig(normalize="none", threshold_method="fixed", fixed_threshold=0.3)
    assert config.train.lr == 1e-3 and not hasattr(config.train, "threshold_method")


def test_resume_refuses_a_changed_data_file(tmp_path):
    data = save_bags(make_demo_bags(n_bags=40, seed=1), tmp_path / "bags.npz")
    run = Run.new("cv", {"data": str(data), "out": str(tmp_path / "run"), "folds": 3})
    with pytest.raises(KeyboardInterrupt), run.started():
        raise KeyboardInterrupt  # killed before any fold finished
    assert Run.resume("cv", run.out).config == run.config
    save_bags(make_demo_bags(n_bags=40, seed=2), data)
    with pytest.raises(ArcmilError, match="the data changed since the run"):
        Run.resume("cv", run.out)


@pytest.mark.parametrize("command", [["cv", "--model", "transmil"], ["compare", "--models", "transmil", "--folds", "3"]])
def test_cross_validation_checks_bag_lengths_before_writing(command, tmp_path, capsys):
    """A learned position table shorter than the bags fails up front, also with folds."""
    data = save_bags(make_demo_bags(n_bags=40, seed=1), tmp_path / "bags.npz")
    out = tmp_path / "run"
    assert main([*command, "--data", str(data), "--out", str(out), "--pos-enc", "learned", "--max-len", "4"]) == 2
    assert "exceed the learned positional table" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("command", [["compare", "--models", "attention_mil,instance_max"],
                                     ["cv", "--folds", "3", "--repeats", "1"]])
def test_compare_and_cv_log_to_a_tracker(command, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = save_bags(make_demo_bags(n_bags=60, seed=4), tmp_path / "bags.npz")
    out = tmp_path / "run"
    assert main([*command, "--data", str(data), "--out", str(out), "--tracker", "tensorboard", *FAST]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    expected = ("final/instance_max/test_roc_auc_mean" if command[0] == "compare"
                else "final/at_val_threshold/roc_auc/mean")
    assert expected in scalars, sorted(scalars)
    if command[0] == "compare":  # cv writes tables only
        assert "roc" in events.Tags()["images"], "the comparison's plots are logged"
