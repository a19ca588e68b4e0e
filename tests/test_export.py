"""ONNX export: every registered model exports, onnxruntime agrees with PyTorch on variable-length
padded batches longer than any seen at export, predict scores an .onnx like its .pth, and the README's
onnxruntime-only example runs with torch unimportable."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import fitted_pooled

from arcmil.calibration import Calibrator
from arcmil.checkpoint import save_checkpoint
from arcmil.cli import main
from arcmil.data import BagSet, Normalizer, save_bags
from arcmil.demo import make_demo_bags
from arcmil.export import ScoringGraph, export_onnx
from arcmil.models import build_model, model_names
from arcmil.models.registry import fitted_by_estimator
from arcmil.scoring import score_bags

DIM = 12
README = Path(__file__).resolve().parents[1] / "README.md"


def small_model(name: str, dim: int = DIM):
    if fitted_by_estimator(name):  # a classical model: fitted, not initialised
        return fitted_pooled(name, dim)
    torch.manual_seed(0)
    sizes = {"d_model": 16, "nhead": 2, "dim_feedforward": 32} if name.startswith("trans") else {"hidden_dim": 8}
    return build_model(name, input_dim=dim, **sizes).eval()


def padded(rng, lengths, dim=DIM):
    x = rng.normal(size=(len(lengths), max(lengths), dim)).astype(np.float32) * 3  # padding holds noise too
    mask = np.arange(max(lengths))[None, :] < np.asarray(lengths)[:, None]
    return x, mask


@pytest.mark.parametrize("name", model_names())
def test_every_model_exports_and_onnxruntime_agrees_with_pytorch(name, tmp_path):
    rng = np.random.default_rng(1)
    model = small_model(name)
    normalizer = Normalizer("standardize", tuple(rng.normal(size=DIM).tolist()), tuple(rng.uniform(0.5, 2, DIM).tolist()))
    calibrator = Calibrator.fit("isotonic", rng.integers(0, 2, 300), rng.normal(0, 2, 300))
    save_checkpoint(tmp_path / "m.pth", model, name, threshold=0.4, threshold_method="f1", normalizer=normalizer,
                    calibrator=calibrator)
    export_onnx(tmp_path / "m.pth", tmp_path / "m.onnx")
    if name.startswith("trans") and "nystrom" not in name:  # exact attention is ONNX's fused operator, per layer
        ops = [node.op_type for node in onnx.load(tmp_path / "m.onnx").graph.node]
        assert ops.count("Attention") == model.config.num_layers, ops
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    graph = ScoringGraph(model, normalizer, calibrator)
    for lengths in ([1], [9, 2, 5], [300, 1, 77, 140]):  # export saw 5 windows; 300 exceeds the Nystrom landmarks
        x, mask = padded(rng, lengths)
        probability, logit, weights = session.run(None, {"embeddings": x, "mask": mask})
        with torch.no_grad():
            expected = [t.numpy() for t in graph(torch.from_numpy(x), torch.from_numpy(mask))]
        np.testing.assert_allclose(probability, expected[0], atol=1e-4)
        np.testing.assert_allclose(logit, expected[1], atol=1e-4)
        np.testing.assert_allclose(weights, expected[2], atol=1e-4)
        assert (weights[~mask] == 0).all() and probability.shape == (len(lengths),)
        # the same bags padded on the left (as serving code often pads) or on both sides score the same
        free = mask.shape[1] - mask.sum(1)
        for shift in (free, free // 2):
            x_moved = np.stack([np.roll(row, n, axis=0) for row, n in zip(x, shift)])
            mask_moved = np.stack([np.roll(row, n) for row, n in zip(mask, shift)])
            probability_moved, logit_moved, weights_moved = session.run(None, {"embeddings": x_moved,
                                                                               "mask": mask_moved})
            np.testing.assert_allclose(logit_moved, expected[1], atol=1e-4)
            np.testing.assert_allclose(probability_moved, expected[0], atol=1e-4)
            np.testing.assert_allclose(np.stack([np.roll(row, -n) for row, n in zip(weights_moved, shift)]),
                                       expected[2], atol=1e-4)
    # and the graph is arcmil's own scoring path: the same probabilities as score_bags
    bags = BagSet([b[:n] for b, n in zip(x, lengths)], None, np.array(["a", "b", "c", "d"]))
    scored = score_bags(model, bags, normalizer, calibrator=calibrator)
    np.testing.assert_allclose(probability, scored.probs, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = save_bags(make_demo_bags(n_bags=150, seed=3), root / "bags.npz")
    assert main(["train", "--model", "transmil", "--data", str(data), "--out", str(root / "run"), "--epochs", "2",
                 "--d-model", "32", "--nhead", "2", "--dim-feedforward", "64", "--n-bootstrap", "0",
                 "--no-progress"]) == 0
    assert main(["export", "--checkpoint", str(root / "run" / "best_transmil.pth"), "--out", str(root / "m.onnx")]) == 0
    return root, data


def test_predict_scores_an_onnx_graph_like_its_checkpoint(trained):
    root, data = trained
    for checkpoint, out in (("run/best_transmil.pth", "pth.csv"), ("m.onnx", "onnx.csv")):
        assert main(["predict", "--checkpoint", str(root / checkpoint), "--data", str(data),
                     "--out", str(root / out)]) == 0
    from_pth, from_onnx = pd.read_csv(root / "pth.csv"), pd.read_csv(root / "onnx.csv")
    assert list(from_pth.columns) == list(from_onnx.columns) and (from_pth.bag_id == from_onnx.bag_id).all()
    np.testing.assert_allclose(from_onnx.prob, from_pth.prob, atol=1e-5)
    weights = from_pth.filter(like="w_").columns
    np.testing.assert_allclose(from_onnx[weights].fillna(0), from_pth[weights].fillna(0), atol=1e-5)
    # the tuned threshold lies halfway between validation scores, so no bag sits on it within float error
    assert (from_pth.pred == from_onnx.pred).all()


def test_export_and_explain_refuse_cleanly(trained, capsys):
    root, data = trained
    assert main(["export", "--checkpoint", str(root / "run" / "best_transmil.pth"), "--out", str(root / "m.onnx")]) == 2
    assert "already exists; refusing to overwrite" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(root / "missing.pth"), "--out", str(root / "x.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err and not (root / "x.onnx").exists()
    assert main(["explain", "--checkpoint", str(root / "m.onnx"), "--data", str(data), "--out",
                 str(root / "ex")]) == 2
    assert "explain needs the PyTorch checkpoint" in capsys.readouterr().err and not (root / "ex").exists()


def test_a_learned_position_graph_refuses_longer_bags_by_name(tmp_path):
    from arcmil.errors import ConfigError
    from arcmil.predict import OnnxModel

    torch.manual_seed(0)
    model = build_model("transformer_mil", input_dim=DIM, d_model=16, nhead=2, dim_feedforward=32, pos_enc="learned",
                        max_len=8).eval()
    save_checkpoint(tmp_path / "m.pth", model, "transformer_mil", threshold=0.5, threshold_method="f1",
                    normalizer=Normalizer("l2"))
    export_onnx(tmp_path / "m.pth", tmp_path / "m.onnx")
    onnx_model, _ = OnnxModel.load(tmp_path / "m.onnx")
    x, mask = padded(np.random.default_rng(0), [8, 3])
    assert onnx_model(torch.from_numpy(x), torch.from_numpy(mask))[0].shape == (2,)  # up to its table: scored
    x, mask = padded(np.random.default_rng(0), [9, 3])
    with pytest.raises(ConfigError, match="9 windows exceeds the learned positional table"):
        onnx_model(torch.from_numpy(x), torch.from_numpy(mask))


def test_the_readme_example_scores_with_onnxruntime_alone(tmp_path):
    example = re.search(r"<!-- onnxruntime-only example -->\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    save_checkpoint(tmp_path / "m.pth", small_model("attention_mil", dim=256), "attention_mil", threshold=0.5,
                    threshold_method="f1", normalizer=Normalizer("l2"))
    export_onnx(tmp_path / "m.pth", tmp_path / "model.onnx")
    guard = "import sys\nsys.modules['torch'] = None  # torch unimportable\n"
    check = "\nassert 'arcmil' not in sys.modules and probability.shape == (3,)\nprint('scored', probability)\n"
    proc = subprocess.run([sys.executable, "-c", guard + example + check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "scored" in proc.stdout, proc.stderr[-2000:]


def test_onnx_scoring_in_attention_slices_equals_one_call(trained, monkeypatch):
    import arcmil.predict as predict

    model, _ = predict.OnnxModel.load(trained[0] / "m.onnx")
    x, mask = padded(np.random.default_rng(2), [30, 7, 19, 30, 2], dim=256)
    whole = [torch.from_numpy(a) for a in model.session.run(None, {"embeddings": x, "mask": mask})[1:]]
    monkeypatch.setattr(predict, "ATTENTION_CELLS", 2 * 30**2)  # two bags per call
    sliced = model(torch.from_numpy(x), torch.from_numpy(mask))
    for a, b in zip(sliced, whole):
        torch.testing.assert_close(a, b)
