"""Each tracker runs offline and what it logged reads back: config, every epoch, final metrics, plots."""
import json

import pytest

from arcmil.cli import main
from arcmil.data import save_bags
from arcmil.demo import make_demo_bags

ARGS = ["train", "--epochs", "3", "--patience", "5", "--n-bootstrap", "0", "--no-progress", "--hidden-dim", "16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return save_bags(make_demo_bags(n_bags=80, seed=7), tmp_path_factory.mktemp("data") / "bags.npz")


def train(tracker, data, out):
    assert main([*ARGS, "--data", str(data), "--out", str(out), "--tracker", tracker]) == 0
    results = json.loads((out / "stage3_attention_mil_results.json").read_text())
    return [row["val_loss"] for row in results["history"]], results["test"]["roc_auc"]


def test_tensorboard(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val_losses, roc_auc = train("tensorboard", data, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    logged = [(e.step, e.value) for e in events.Scalars("epoch/val_loss")]
    assert [s for s, _ in logged] == [1, 2, 3] and [v for _, v in logged] == pytest.approx(val_losses, rel=1e-6)
    assert events.Scalars("final/test/roc_auc")[0].value == pytest.approx(roc_auc, rel=1e-6)
    assert {"roc", "pr", "training_curves", "attention"} <= set(events.Tags()["images"])
    assert "attention_mil" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def wandb_records(path):
    """The protobuf records of an offline .wandb file (a LevelDB-style log after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a record header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    val_losses, roc_auc = train("wandb", data, tmp_path / "run")
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, config = [], {}, {}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            summary.update({item.key or "/".join(item.nested_key): item.value_json for item in record.summary.update})
        elif kind == "run":  # the run record carries the config given to wandb.init
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    epochs = [row for row in history if "val_loss" in row]
    assert [row["val_loss"] for row in epochs] == pytest.approx(val_losses, rel=1e-6)
    assert json.loads(summary["final/test/roc_auc"]) == pytest.approx(roc_auc, rel=1e-6)
    assert config["model"] == "attention_mil" and config["epochs"] == 3
    images = {key.split("/")[0] for row in history for key in row if key.endswith("/_type")}
    assert {"roc", "pr", "training_curves", "attention"} <= images, "plots are logged as images"


def test_mlflow_local_store(data, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    val_losses, roc_auc = train("mlflow", data, tmp_path / "run")
    client = MlflowClient((tmp_path / "run" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("arcmil").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(val_losses, rel=1e-6)
    assert run.data.metrics["final.test.roc_auc"] == pytest.approx(roc_auc, rel=1e-6)
    assert run.data.params["model"] == "attention_mil" and run.data.params["epochs"] == "3"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/roc.png", "plots/pr.png"}


def test_missing_tracker_package_is_a_clear_error(data, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.setattr("importlib.import_module", lambda name: no_wandb(name))
    assert main([*ARGS, "--data", str(data), "--out", str(tmp_path / "run"), "--tracker", "wandb"]) == 2
    assert "pip install 'arcmil[wandb]'" in capsys.readouterr().err
