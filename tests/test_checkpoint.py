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
