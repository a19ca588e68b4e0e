"""Multi-class and multi-label documents end to end: every reader and the store, K-output models,
the calibration families, and the commands a binary user runs (train, predict, export, compare, cv)."""
import re
import subprocess
import sys
from dataclasses import replace
from html import unescape

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fitted_pooled
from scipy.special import softmax

from arcmil.api import MILClassifier
from arcmil.calibration import (
    PerLabelCalibrator,
    SoftmaxCalibrator,
    calibrator_from_dict,
    fit_calibrator,
)
from arcmil.checkpoint import load_checkpoint
from arcmil.checks import check_inputs
from arcmil.cli import main
from arcmil.data import load_bags, save_bags
from arcmil.data.store import convert_to_store
from arcmil.errors import ConfigError
from arcmil.explain import explain_bags, integrated_gradients, localisation_auc, occlusion
from arcmil.html_report import GALLERY_MAX_CLASSES, _gallery_classes
from arcmil.labels import LabelSpace
from arcmil.models import build_model, model_names
from arcmil.models.layers import AttentionPooler, BranchLinear
from arcmil.models.registry import fitted_by_estimator
from arcmil.tasks import make_multiclass_task, make_multilabel_task, make_task
from arcmil.train import TrainConfig

FAST = ["--epochs", "1", "--n-bootstrap", "20", "--no-progress"]
SMALL = {"d_model": 16, "nhead": 2, "dim_feedforward": 32, "pooler_hidden": 16}


@pytest.fixture(scope="module")
def classes():
    return make_multiclass_task(4, n_bags=120, dim=16, seed=0)


@pytest.fixture(scope="module")
def tags():
    return make_multilabel_task(3, n_bags=120, dim=16, n_windows=10, seed=0)


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".csv", ".parquet", "store"])
@pytest.mark.parametrize("kind", ["classes", "tags"])
def test_every_format_keeps_the_label_space(kind, suffix, request, tmp_path):
    bags = request.getfixturevalue(kind)
    if suffix == "store":
        convert_to_store(save_bags(bags, tmp_path / "b.csv"), tmp_path / "store", chunk_windows=64)
        back = load_bags(tmp_path / "store")
    else:
        back = load_bags(save_bags(bags, tmp_path / f"b{suffix}"))
    assert back.label_space == bags.label_space
    np.testing.assert_array_equal(back.labels, bags.labels)


def test_a_store_keeps_multi_label_where_no_bag_has_two_labels(tmp_path):
    bags = make_multilabel_task(3, n_bags=40, dim=8, n_windows=10, rate=0.2, seed=1)
    one = bags.subset(np.flatnonzero(bags.labels.sum(1) <= 1))
    convert_to_store(save_bags(one, tmp_path / "one.csv"), tmp_path / "store")
    back = load_bags(tmp_path / "store")
    assert back.label_space.kind == "multilabel"
    np.testing.assert_array_equal(back.labels, one.labels)


@pytest.mark.parametrize("name", model_names())
def test_every_model_gives_k_logits_independent_of_padding(name):
    torch.manual_seed(0)
    cfg = {"input_dim": 8, "n_outputs": 3, **(SMALL if name.startswith("trans") else {"hidden_dim": 16})}
    if name.startswith("transmil"):
        cfg.pop("pooler_hidden")
    model = fitted_pooled(name, 8, n_outputs=3) if fitted_by_estimator(name) else build_model(name, **cfg).eval()
    assert model.config.tag().endswith("_out3")
    x = torch.randn(2, 7, 8)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        logits, weights = model(x, mask)
        alone, alone_weights = model(x[1:, :4], mask[1:, :4])
    assert logits.shape == (2, 3) and weights.shape == (2, 7)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[1:, :4], alone_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(1), torch.ones(2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["attention_mil", "attention_mil_gated", "transformer_mil"])
def test_class_attention_gives_each_class_its_own_weights_independent_of_padding(name):
    torch.manual_seed(0)
    cfg = {"input_dim": 8, "n_outputs": 3, "class_attention": True,
           **(SMALL if name.startswith("trans") else {"hidden_dim": 16})}
    model = build_model(name, **cfg).eval()
    assert model.config.tag().endswith("_out3_clsatt")
    x = torch.randn(2, 7, 8)
    x[1, 4:] = float("nan")  # padding may hold anything
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        logits, weights = model(x, mask)
        alone, alone_weights = model(x[1:, :4], mask[1:, :4])
    assert logits.shape == (2, 3) and weights.shape == (2, 3, 7)
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[1:, :, :4], alone_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3), atol=1e-5, rtol=1e-5)
    assert (weights[1, :, 4:] == 0).all()
    assert not torch.allclose(weights[0, 0], weights[0, 1])  # a separate attention per class


def test_each_class_attention_branch_is_a_one_branch_pooler_and_its_own_linear_head():
    torch.manual_seed(0)
    pooler = AttentionPooler(6, hidden=5, gated=True, branches=3).eval()
    head = BranchLinear(6, 3)
    h, mask = torch.randn(2, 4, 6), torch.tensor([[True] * 4, [True, True, False, True]])
    with torch.no_grad():
        z, weights = pooler(h, mask)
        logits = head(z)
        for k in range(3):
            one = AttentionPooler(6, hidden=5, gated=True).eval()
            one.load_state_dict({**pooler.state_dict(), "w.weight": pooler.w.weight[k:k + 1],
                                 "w.bias": pooler.w.bias[k:k + 1]})
            z_k, weights_k = one(h, mask)
            torch.testing.assert_close(weights[:, k], weights_k)
            torch.testing.assert_close(z[:, k], z_k)
            torch.testing.assert_close(logits[:, k], z_k @ head.weight[k] + head.bias[k])


def test_class_attention_needs_an_attention_pooler_and_several_outputs():
    with pytest.raises(ConfigError, match="class_attention needs pool='attention'"):
        build_model("transformer_mil_topk", input_dim=8, n_outputs=3, class_attention=True)
    binary = make_task("sparse_presence", n_bags=60, dim=8, seed=0)
    with pytest.raises(ConfigError, match="class_attention is for multi-class and multi-label data"):
        check_inputs(binary, "attention_mil", TrainConfig(), {"class_attention": True})
    one = build_model("attention_mil", input_dim=8, class_attention=True)  # the library: one output, one attention
    assert one(torch.randn(1, 5, 8))[0].shape == (1,) and one.config.tag() == "abmil_h128_drop01"


def _nll(labels, probs):
    return -np.mean(np.log(probs[np.arange(len(labels)), labels]))


def test_vector_scaling_undoes_a_shift_and_temperature_recovers_a_scale(rng):
    z = rng.normal(0, 2, (4000, 3))
    true = softmax(z / 2, axis=1)
    labels = np.array([rng.choice(3, p=p) for p in true])
    shifted = z + np.array([0.0, 1.5, -1.0])  # what class weighting does to logits
    fit, held = slice(0, 2000), slice(2000, None)
    platt = fit_calibrator("platt", labels[fit], shifted[fit], LabelSpace("multiclass", ("a", "b", "c")))
    assert isinstance(platt, SoftmaxCalibrator)
    assert _nll(labels[held], platt(shifted[held])) < _nll(labels[held], softmax(shifted[held], axis=1)) - 0.05
    temperature = SoftmaxCalibrator.fit("temperature", labels[fit], z[fit])
    assert temperature.temperature == pytest.approx(2.0, rel=0.15)
    np.testing.assert_allclose(platt(shifted[:5]).sum(1), 1.0)
    with pytest.raises(ConfigError, match="calibrate 'isotonic' has no multi-class form"):
        SoftmaxCalibrator.fit("isotonic", labels, z)


def test_per_label_calibration_is_the_binary_map_of_each_label(rng):
    logits = rng.normal(0, 2, (300, 2))
    labels = (rng.random((300, 2)) < 1 / (1 + np.exp(-logits - 1))).astype(int)
    space = LabelSpace("multilabel", ("x", "y"))
    calibrator = fit_calibrator("platt", labels, logits, space)
    assert isinstance(calibrator, PerLabelCalibrator)
    second = fit_calibrator("platt", labels[:, 1], logits[:, 1])
    np.testing.assert_allclose(calibrator(logits)[:, 1], second(logits[:, 1]))
    again = calibrator_from_dict(calibrator.to_dict(), space)
    np.testing.assert_allclose(again(logits), calibrator(logits))


def test_train_predict_and_export_a_multiclass_model(classes, tmp_path, capsys):
    data = save_bags(classes, tmp_path / "docs.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "transformer_mil", "--data", str(data), "--out", str(run), *FAST,
                 "--class-attention", *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]) == 0
    model, meta = load_checkpoint(run / "best_transformer_mil.pth")
    assert meta["label_space"] == classes.label_space.to_dict() and meta["threshold"] is None
    predictions = pd.read_csv(run / "predictions.csv")
    probs = predictions[[f"prob_{c}" for c in classes.label_space.classes]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert (predictions["pred"] == np.asarray(classes.label_space.classes)[probs.argmax(1)]).all()
    out = tmp_path / "scored.csv"
    assert main(["predict", "--checkpoint", str(run / "best_transformer_mil.pth"), "--data", str(data),
                 "--out", str(out)]) == 0
    assert "argmax of the class probabilities" in capsys.readouterr().out
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(run / "best_transformer_mil.pth"), "--out", str(graph)]) == 0
    assert main(["predict", "--checkpoint", str(graph), "--data", str(data), "--out", str(tmp_path / "onnx.csv")]) == 0
    torch_probs, onnx_probs = pd.read_csv(out), pd.read_csv(tmp_path / "onnx.csv")
    columns = [c for c in torch_probs if c.startswith("prob_")]
    np.testing.assert_allclose(onnx_probs[columns], torch_probs[columns], atol=1e-5)
    # one attention per class: a weight column per class, in long format, the same from the graph
    torch_weights = pd.read_csv(tmp_path / "scored_window_weights.csv")
    onnx_weights = pd.read_csv(tmp_path / "onnx_window_weights.csv")
    names = [f"weight_{c}" for c in classes.label_space.classes]
    assert list(torch_weights.columns) == ["bag_id", "window", *names]
    np.testing.assert_allclose(torch_weights.groupby("bag_id")[names].sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(onnx_weights[names], torch_weights[names], atol=1e-5)


def test_predict_refuses_a_class_the_model_does_not_know(classes, tmp_path):
    data = save_bags(classes, tmp_path / "docs.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "attention_mil", "--data", str(data), "--out", str(run), *FAST]) == 0
    other = classes.subset(range(20))
    other.labels = np.where(np.arange(20) == 3, 0, other.labels)
    names = np.asarray(classes.label_space.classes, dtype=object)[other.labels]
    names[3] = "memo"
    np.savez(tmp_path / "new.npz", embeddings=other.bags.gather(np.arange(20)),
             lengths=other.lengths, bag_ids=other.bag_ids, labels=names.astype(str))
    proc = subprocess.run([sys.executable, "-m", "arcmil", "predict", "--checkpoint",
                           str(run / "best_attention_mil.pth"), "--data", str(tmp_path / "new.npz"),
                           "--out", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"bag '{other.bag_ids[3]}': field 'labels': class 'memo' is not one the model knows" in proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_multilabel_train_compare_and_cv(tags, tmp_path, capsys):
    data = save_bags(tags, tmp_path / "docs.csv")
    run = tmp_path / "run"
    assert main(["train", "--model", "attention_mil", "--data", str(data), "--out", str(run), *FAST]) == 0
    predictions = pd.read_csv(run / "predictions.csv")
    for name in tags.label_space.classes:
        assert {f"label_{name}", f"prob_{name}", f"pred_{name}"} <= set(predictions.columns)
    _, meta = load_checkpoint(run / "best_attention_mil.pth")
    assert len(meta["threshold"]) == 3
    row = pd.read_csv(run / "stage3_attention_mil_results.csv").iloc[0]  # one number per cell
    assert [row[f"threshold_{name}"] for name in tags.label_space.classes] == pytest.approx(meta["threshold"])
    results = meta["results"]["test"]
    assert set(results["per_label"]) == set(tags.label_space.classes) and 0 <= results["hamming_loss"] <= 1
    assert main(["compare", "--models", "attention_mil,instance_max", "--data", str(data), "--seeds", "0,1",
                 "--out", str(tmp_path / "compare"), *FAST]) == 0
    assert (tmp_path / "compare" / "roc.png").exists()  # every (bag, label) pair pooled per model
    paired = pd.read_csv(tmp_path / "compare" / "paired_tests.csv")
    assert set(paired["metric"]) == {"test_roc_auc", "test_f1", "test_accuracy"}
    assert main(["cv", "--model", "attention_mil", "--data", str(data), "--folds", "3", "--repeats", "1",
                 "--out", str(tmp_path / "cv"), *FAST]) == 0
    folds = pd.read_csv(tmp_path / "cv" / "cv_folds.csv")
    assert len(folds) == 3 and "test_precision" not in folds and folds["test_roc_auc"].between(0, 1).all()
    assert folds[[f"threshold_{name}" for name in tags.label_space.classes]].apply(pd.api.types.is_float_dtype).all()


def test_multiclass_cv_reports_argmax_decisions_once(classes, tmp_path, capsys):
    data = save_bags(classes, tmp_path / "docs.npz")
    assert main(["cv", "--model", "attention_mil", "--data", str(data), "--folds", "3", "--repeats", "1",
                 "--hidden-dim", "16", "--out", str(tmp_path / "cv"), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| metric | mean ± std |" in printed and "at 0.5" not in printed
    folds = pd.read_csv(tmp_path / "cv" / "cv_folds.csv")
    assert not [c for c in folds if c.startswith("threshold") or c.endswith("_at_0.5")]
    assert "at 0.5" not in (tmp_path / "cv" / "report.html").read_text()


def test_integrated_gradients_of_each_class_add_up_to_its_logit_difference():
    torch.manual_seed(0)
    model = build_model("attention_mil", input_dim=8, hidden_dim=16, n_outputs=3).eval()
    x = torch.randn(6, 8)
    with torch.no_grad():
        gap = model(x[None])[0][0] - model(torch.zeros_like(x)[None])[0][0]
    for k in range(3):
        attributions = integrated_gradients(model, x, steps=256, output=k)
        assert attributions.sum().item() == pytest.approx(gap[k].item(), abs=2e-3 + 1e-2 * abs(gap[k].item()))
    drops = occlusion(model, x)
    with torch.no_grad():
        without_2 = model(x[None, [0, 1, 3, 4, 5]])[0][0]
    torch.testing.assert_close(drops[2], model(x[None])[0][0].detach() - without_2, atol=1e-5, rtol=1e-5)


def test_explain_rows_per_class(classes, tags):
    torch.manual_seed(0)
    model = build_model("attention_mil", input_dim=16, hidden_dim=16, n_outputs=4).eval()
    part = classes.subset(range(6))
    frame = explain_bags(model, part, steps=4)
    assert len(frame) == int(part.lengths.sum())  # one (the most probable) class per bag
    assert set(frame["class"]) <= set(classes.label_space.classes)
    chosen = explain_bags(model, part, steps=4, classes=["none", "pair_3"])
    assert len(chosen) == 2 * int(part.lengths.sum())
    holds = chosen.groupby(["bag_id", "class"])["label"].first()
    truth = dict(zip(part.bag_ids, np.asarray(classes.label_space.classes)[part.labels]))
    assert all(h == int(truth[bag] == name) for (bag, name), h in holds.items())
    with pytest.raises(ConfigError, match="unknown class 'memo' to explain"):
        explain_bags(model, part, classes=["memo"])
    tagger = build_model("attention_mil", input_dim=16, hidden_dim=16, n_outputs=3).eval()
    every = explain_bags(tagger, tags.subset(range(4)), steps=4)
    assert len(every) == 3 * int(tags.subset(range(4)).lengths.sum())
    scores = localisation_auc(every, ["weights", "occlusion"])
    held = tags.subset(range(4)).labels.any(axis=0)  # the labels some of the four bags carry
    assert set(scores["per_class"]) == {name for name, h in zip(tags.label_space.classes, held) if h}


def test_explained_weights_are_the_explained_class_attention(classes):
    torch.manual_seed(0)
    model = build_model("attention_mil", input_dim=16, hidden_dim=16, n_outputs=4, class_attention=True).eval()
    part = classes.subset(range(3))
    frame = explain_bags(model, part, ["weights"], classes=list(classes.label_space.classes))
    for i, bag in enumerate(part.bag_ids):
        with torch.no_grad():
            _, weights = model(torch.as_tensor(part.bags[i])[None])
        for k, name in enumerate(classes.label_space.classes):
            rows = frame[(frame["bag_id"] == bag) & (frame["class"] == name)]
            np.testing.assert_allclose(rows["weights"], weights[0, k].numpy(), rtol=1e-5, atol=1e-7)


def test_demo_data_writes_multiclass_and_multilabel_documents(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "k.npz"), "--n-bags", "60", "--classes", "5"]) == 0
    assert "wrote 60 multi-class bags (none" in capsys.readouterr().out
    bags = load_bags(tmp_path / "k.npz")
    assert bags.label_space.classes == ("none", "order_1", "order_4", "pair_3", "witness_2")
    assert main(["demo-data", "--out", str(tmp_path / "l.csv"), "--n-bags", "60", "--multi-label"]) == 0
    assert load_bags(tmp_path / "l.csv").label_space.kind == "multilabel"
    assert main(["demo-data", "--out", str(tmp_path / "x.npz"), "--classes", "1"]) == 2


def test_milclassifier_speaks_class_names(classes):
    bags = [classes.bags[i] for i in range(len(classes))]
    names = np.asarray(classes.label_space.classes)[classes.labels]
    clf = MILClassifier("attention_mil", epochs=1, hidden_dim=16, n_bootstrap=0).fit(bags, names)
    assert clf.classes_.tolist() == list(classes.label_space.classes)
    proba = clf.predict_proba(bags[:10])
    assert proba.shape == (10, 4)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    assert (clf.predict(bags[:10]) == clf.classes_[proba.argmax(1)]).all()
    assert clf.score(bags, names) == pytest.approx(np.mean(clf.predict(bags) == names))


def test_milclassifier_multilabel_round_trip(tags, tmp_path):
    bags = [tags.bags[i] for i in range(len(tags))]
    clf = MILClassifier("attention_mil", epochs=1, hidden_dim=16, n_bootstrap=0).fit(bags, tags.labels)
    pred = clf.predict(bags[:8])
    assert pred.shape == (8, 3) and set(np.unique(pred)) <= {0, 1}
    clf.save(tmp_path / "m.pth")
    again = MILClassifier.load(tmp_path / "m.pth")
    assert again.classes_.tolist() == clf.classes_.tolist()
    np.testing.assert_allclose(again.predict_proba(bags[:8]), clf.predict_proba(bags[:8]), rtol=1e-6)


def test_report_shows_the_confusion_matrix_and_per_class_gallery_with_any_class_names(classes, tmp_path):
    hostile = ("<b>bold</b>", "$x^2$", "a&b", "plain")  # HTML, mathtext and an ampersand in class names
    data = save_bags(replace(classes, label_space=LabelSpace("multiclass", hostile)), tmp_path / "docs.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "attention_mil", "--data", str(data), "--out", str(run), *FAST]) == 0
    html = (run / "report.html").read_text()
    counts = load_checkpoint(run / "best_attention_mil.pth")[1]["results"]["test"]["confusion_matrix"]["counts"]
    assert "Confusion matrix" in html and sum(map(sum, counts)) == len(pd.read_csv(run / "split.csv").query(
        "split == 'test'"))
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "a&amp;b" in html
    # the gallery: per class, its most confident right and wrong prediction, where the test split has one
    test = pd.read_csv(run / "predictions.csv", dtype={"label": str, "pred": str}).query("split == 'test'")
    expected = {("right", c) for c in hostile if ((test["label"] == c) & (test["pred"] == c)).any()}
    expected |= {("wrong", c) for c in hostile if ((test["label"] != c) & (test["pred"] == c)).any()}
    shown = {(kind, unescape(name)) for kind, name in re.findall(r"— (right|wrong) (.+?): doc", html)}
    assert expected and shown == expected


def test_the_gallery_keeps_the_classes_with_most_test_documents():
    space = LabelSpace("multiclass", tuple(f"c{k}" for k in range(GALLERY_MAX_CLASSES + 3)))
    labels = np.repeat(space.classes, np.arange(len(space.classes)) + 1)  # class k has k + 1 test documents
    test = pd.DataFrame({"label": labels, "pred": labels})
    assert _gallery_classes(test, space) == list(space.classes[3:])


def test_a_binary_table_keeps_its_own_label_columns(tmp_path):
    from arcmil.data.writers import bags_to_table
    from arcmil.demo import make_demo_bags

    frame = bags_to_table(make_demo_bags(n_bags=20, dim=8, seed=0)).assign(label_source="annotator")
    frame.to_csv(tmp_path / "t.csv", index=False)
    bags = load_bags(tmp_path / "t.csv")
    assert bags.label_space.binary and set(np.unique(bags.labels)) == {0, 1}


def test_a_loaded_classifier_refits_and_explains_per_class(classes, tmp_path):
    bags = [classes.bags[i] for i in range(len(classes))]
    names = np.asarray(classes.label_space.classes)[classes.labels]
    MILClassifier("attention_mil", epochs=1, hidden_dim=16, n_bootstrap=0).fit(bags, names).save(tmp_path / "m.pth")
    loaded = MILClassifier.load(tmp_path / "m.pth")
    assert "n_outputs" not in loaded.get_params() and loaded.config().model == "attention_mil"
    frame = loaded.explain(bags[:3], methods=("weights", "occlusion"))
    assert set(frame["class"]) <= set(classes.label_space.classes) and len(frame) == sum(len(b) for b in bags[:3])


def test_a_store_of_one_based_classes_written_in_chunks_holds_only_those_classes(tmp_path):
    bags = make_multiclass_task(3, n_bags=60, dim=8, seed=2)
    order = np.argsort(bags.labels, kind="stable")  # chunks of one or two classes each: some read as 0/1
    ones = bags.subset(order)
    ones.labels = ones.labels + 1  # classes 1, 2, 3
    np.savez(tmp_path / "b.npz", embeddings=ones.bags.gather(np.arange(60)), lengths=ones.lengths,
             bag_ids=ones.bag_ids, labels=ones.labels)
    convert_to_store(tmp_path / "b.npz", tmp_path / "store", chunk_windows=120)
    back = load_bags(tmp_path / "store")
    assert back.label_space == LabelSpace("multiclass", ("1", "2", "3"))
    np.testing.assert_array_equal(back.labels, ones.labels - 1)
