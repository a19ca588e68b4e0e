import pytest
import torch

from arcmil.checkpoint import load_checkpoint, save_checkpoint
from arcmil.data import Normalizer
from arcmil.errors import ArcmilError
from arcmil.models import build_model


def test_round_trip_rebuilds_the_model_without_flags(tmp_path):
    model = build_model("transmil_dual", input_dim=12, d_model=16, nhead=2, pos_enc="learned", max_len=40).eval()
    path = save_checkpoint(tmp_path / "m.pth", model, "transmil_dual", threshold=0.37, threshold_method="f1",
                           normalizer=Normalizer("standardize", (0.0,) * 12, (2.0,) * 12))
    raw = torch.load(path, weights_only=True)  # plain data: no code is unpickled
    assert raw["model_name"] == "transmil_dual" and raw["tag"].startswith("transmil_dual_d16_h2")
    loaded, meta = load_checkpoint(path)
    assert meta["threshold"] == 0.37 and Normalizer.from_dict(meta["normalization"]).std == (2.0,) * 12
    x = torch.randn(3, 7, 12)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert loaded.config == model.config and not loaded.training


def test_refuses_pickled_code_and_foreign_files(tmp_path):
    torch.save({"model_name": "transmil", "hook": ArcmilError("x")}, tmp_path / "evil.pth")
    with pytest.raises(ArcmilError, match="refused: the checkpoint holds pickled code"):
        load_checkpoint(tmp_path / "evil.pth")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pth")
    with pytest.raises(ArcmilError, match="not an arcmil checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    with pytest.raises(ArcmilError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")


def _tampered(tmp_path, **changes):
    model = build_model("attention_mil", input_dim=12, hidden_dim=8)
    path = save_checkpoint(tmp_path / "m.pth", model, "attention_mil", threshold=0.4, threshold_method="f1",
                           normalizer=Normalizer("l2"))
    payload = torch.load(path, weights_only=True)
    for key, change in changes.items():
        payload[key] = change(payload[key])
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"model_name": lambda _: "resnet"}, "model 'resnet' is not a registered model"),
    ({"model_name": lambda _: "transmil"}, "model_config does not describe a transmil"),
    ({"model_config": lambda c: {**c, "hidden_dim": 16}}, "weights do not fit a attention_mil.*size mismatch"),
    ({"state_dict": lambda sd: {k: v for k, v in sd.items() if not k.startswith("classifier")}}, "Missing key"),
    ({"threshold": lambda _: 1.7}, "threshold 1.7 is not a probability"),
    ({"normalization": lambda _: {"kind": "zscore"}}, "unknown normalization"),
    ({"normalization": lambda _: {"kind": "standardize", "mean": [0.0] * 5, "std": [1.0] * 5}},
     "standardize statistics have 5 features, the model input_dim is 12"),
    ({"label_space": lambda _: {"kind": "multiclass"}}, "m.pth: label_space .* is not a label space"),
    ({"calibration": lambda _: {"method": "platt", "slope": "steep"}}, "m.pth: calibration .* is malformed"),
])
def test_checkpoint_fields_are_checked_against_each_other(tmp_path, changes, message):
    with pytest.raises(ArcmilError, match=message):
        load_checkpoint(_tampered(tmp_path, **changes))


def test_a_checkpoint_from_before_pos_scale_by_keeps_its_constant_position_scale(tmp_path):
    """Checkpoints written before the position scale could follow the content have no ``pos_scale_by``:
    they load as the constant scale they were trained with (a guard for the day the default changes)."""
    model = build_model("transformer_mil", input_dim=12, d_model=16, nhead=2, pos_scale=0.3).eval()
    path = save_checkpoint(tmp_path / "m.pth", model, "transformer_mil", threshold=0.5, threshold_method="f1",
                           normalizer=Normalizer("l2"))
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["pos_scale_by"]
    torch.save(payload, path)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.pos_scale_by == "constant"
    x = torch.randn(2, 6, 12)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
