"""The shared run: one resolved config per command that config.yaml records whole, resume that refuses
changed data, and the pre-flight checks and trackers that train, compare and cv now share."""
import dataclasses
import json

import pytest
import yaml

from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags
from arcmil.errors import ArcmilError, ConfigError
from arcmil.models import make_config
from arcmil.pipeline import EvalConfig
from arcmil.run import Run
from arcmil.settings import INFERRED, resolve
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
        model_fields = {f.name for f in dataclasses.fields(make_config(config.model))} - INFERRED
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


def interrupted(command: str, settings: dict) -> Run:
    """A run of ``command`` killed before its first result."""
    run = Run.new(command, settings)
    with pytest.raises(KeyboardInterrupt), run.started():
        raise KeyboardInterrupt
    return run


def test_resume_refuses_settings_other_than_the_recorded_ones(tmp_path):
    data = save_bags(make_demo_bags(n_bags=40, seed=1), tmp_path / "bags.npz")
    run = interrupted("train", {"data": str(data), "out": str(tmp_path / "run"), "model": "transmil", "epochs": 9})
    for given, key in (({"epochs": 7}, "epochs"), ({"lr": 0.1, "epochs": 9}, "lr"), ({"model": "attention_mil"}, "model"),
                       ({"calibrate": "isotonic"}, "calibrate"), ({"d_model": 64}, "d_model")):
        with pytest.raises(ArcmilError, match=f"as it was started: .*{key}=.* \\(given "):
            Run.resume("train", run.out, given)
    assert Run.resume("train", run.out, {"epochs": 9, "model": "transmil"}).config == run.config  # as recorded: fine
    with pytest.raises(ArcmilError, match="--out names another directory"):
        Run.resume("train", run.out, {"out": str(tmp_path / "elsewhere")})
    resumed = Run.resume("train", run.out, {"device": "cpu", "progress": False})  # change no result: allowed
    assert resumed.config.train.device == "cpu" and not resumed.config.train.progress
    with pytest.raises(KeyboardInterrupt), resumed.started():
        raise KeyboardInterrupt
    info = json.loads((run.out / "run_info.json").read_text())
    assert info["command"] == "train" and info["resumes"][-1]["changed"] == {"device": "cpu", "progress": False}


@pytest.mark.parametrize("started,resumed", [("train", "cv"), ("cv", "train"), ("compare", "cv"), ("tune", "train")])
def test_resume_refuses_another_command(started, resumed, tmp_path):
    settings = {"trials": 2} if started == "tune" else {}
    run = interrupted(started, {"out": str(tmp_path / "run"), **settings})
    with pytest.raises(ArcmilError, match=f"a run of arcmil {started}, not {resumed}"):
        Run.resume(resumed, run.out)
    info = json.loads((run.out / "run_info.json").read_text())
    del info["command"]  # a run from before the command was recorded: told by its config.yaml's run keys
    (run.out / "run_info.json").write_text(json.dumps(info))
    recorded = yaml.safe_load((run.out / "config.yaml").read_text())
    del recorded["score_train"]  # nor do settings added since then confuse it
    (run.out / "config.yaml").write_text(yaml.safe_dump(recorded))
    with pytest.raises(ArcmilError, match=f"a run of arcmil {started}, not {resumed}"):
        Run.resume(resumed, run.out)


def test_resume_finds_the_data_from_any_directory_and_at_a_new_path(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    save_bags(make_demo_bags(n_bags=40, seed=1), tmp_path / "project" / "bags.npz")
    monkeypatch.chdir(tmp_path / "project")
    interrupted("cv", {"data": "bags.npz", "out": "run", "folds": 3})  # a relative path
    monkeypatch.chdir(tmp_path)
    assert Run.resume("cv", "project/run").config.data == str(tmp_path / "project" / "bags.npz")
    (tmp_path / "project" / "bags.npz").rename(tmp_path / "moved.npz")
    with pytest.raises(ArcmilError, match="bags.npz is not found .*give --data"):
        Run.resume("cv", "project/run")
    moved = Run.resume("cv", "project/run", {"data": "moved.npz"})  # the same file at a new place
    assert moved.config.data == str(tmp_path / "moved.npz")
    with pytest.raises(KeyboardInterrupt), moved.started():
        raise KeyboardInterrupt
    assert yaml.safe_load((tmp_path / "project" / "run" / "config.yaml").read_text())["data"] == str(tmp_path / "moved.npz")
    assert Run.resume("cv", "project/run").config.data == str(tmp_path / "moved.npz")  # found without --data now
    save_bags(make_demo_bags(n_bags=40, seed=2), tmp_path / "other.npz")
    with pytest.raises(ArcmilError, match="data=.*moved.npz.* \\(given .*other.npz"):
        Run.resume("cv", "project/run", {"data": "other.npz"})
    demo = interrupted("cv", {"out": str(tmp_path / "demo_run"), "folds": 3})  # the built-in data: no file to move
    with pytest.raises(ArcmilError, match="data=None \\(given .*other.npz"):
        Run.resume("cv", demo.out, {"data": "other.npz"})


def test_cli_resume_with_other_flags_is_a_one_line_error(tmp_path, capsys):
    run = interrupted("train", {"out": str(tmp_path / "run"), "epochs": 3})
    assert main(["train", "--resume", str(run.out), "--epochs", "7", "--lr", "0.1", "--model", "transmil"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for change in ("model='attention_mil' (given 'transmil')", "epochs=3 (given 7)", "lr=0.0005 (given 0.1)"):
        assert change in err, err
    assert main(["cv", "--resume", str(run.out)]) == 2
    assert "a run of arcmil train, not cv" in capsys.readouterr().err
    assert json.loads((run.out / "run_state.json").read_text())["status"] == "failed"  # untouched by the refusals


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
