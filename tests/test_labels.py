"""Label spaces: how labels are read, encoded and recoded, and the loss, decisions and metrics each
kind owns (checked against scikit-learn or by construction)."""
import io

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, hamming_loss, log_loss, roc_auc_score

from arcmil.data import BagSet, split_parts
from arcmil.errors import DataError
from arcmil.labels import BINARY, LabelSpace, infer, merge
from arcmil.metrics import bootstrap_ci, multiclass_metrics, multilabel_metrics

IDS = np.array([f"b{i}" for i in range(6)])


def test_zero_one_numbers_stay_binary_and_other_labels_become_classes():
    assert infer(np.array([0, 1, 1, 0]), "f", IDS)[0] == BINARY
    for written in (np.array(["0", "1", " 1", "0"]), np.array(["0.0", "1.0", "1.0", "0.0"])):  # text cells
        assert infer(written, "f", IDS)[0] == BINARY and infer(written, "f", IDS)[1].tolist() == [0, 1, 1, 0]
    space, signs = infer(np.array([-1, 1, 1, -1]), "f", IDS)  # the -1/1 convention: -1 is negative
    assert space == BINARY and signs.tolist() == [0, 1, 1, 0]
    assert infer(np.array([-1, -1]), "f", IDS)[1].tolist() == [0, 0]  # a store chunk of negatives alone
    truth = infer(np.array(["True", "false", " TRUE", "False"]), "f", IDS)  # pandas' booleans, read as text
    assert truth[0] == BINARY and truth[1].tolist() == [1, 0, 1, 0]
    space, ids = infer(np.array([5, 1, 2, 5, 10, 2]), "f", IDS)
    assert space == LabelSpace("multiclass", ("1", "2", "5", "10"))  # numeric order, not "10" < "2"
    np.testing.assert_array_equal(ids, [2, 0, 1, 2, 3, 1])
    space, ids = infer(np.array(["letter", "invoice", "letter", "contract", "invoice", "letter"]), "f", IDS)
    assert space.classes == ("contract", "invoice", "letter") and ids.tolist() == [2, 1, 2, 0, 1, 2]


def test_label_sets_and_matrices_are_multi_label():
    space, matrix = infer(np.array(["a|b", "", "b", "c|a", "a", "b"]), "f", IDS)
    assert space == LabelSpace("multilabel", ("a", "b", "c"))
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0]])
    space, same = infer(matrix, "f", IDS, names=["a", "b", "c"])
    assert space.classes == ("a", "b", "c") and (same == matrix).all()
    space, _ = infer(np.array(["a", "b", "a", "a", "b", "a"]), "f", IDS, label_sets=True)
    assert space.kind == "multilabel"


@pytest.mark.parametrize("raw,message", [
    (np.array([0, 1, 0.5, 1, 0, 1]), "bag 'b2': field 'labels': label 0.5 is not 0/1 or a class id"),
    (np.array([[0, 1], [1, 0], [2, 0], [0, 0], [1, 1], [0, 1]]),
     "bag 'b2': field 'labels': label matrix value 2 in column 0 is not 0 or 1"),
    (np.array(["a", "b", "", "a", "b", "a"]), "bag 'b2': field 'labels': empty label"),
])
def test_bad_labels_name_the_bag(raw, message):
    with pytest.raises(DataError, match=message):
        infer(raw, "f", IDS)


def test_recode_matches_classes_by_name_and_refuses_unknown_ones():
    model = LabelSpace("multiclass", ("contract", "invoice", "letter"))
    data, ids = infer(np.array(["letter", "invoice", "letter", "letter", "letter", "invoice"]), "f", IDS)
    np.testing.assert_array_equal(model.recode(ids, data, "f", IDS), [2, 1, 2, 2, 2, 1])
    data, ids = infer(np.array(["letter", "memo", "letter", "letter", "letter", "invoice"]), "f", IDS)
    with pytest.raises(DataError, match="bag 'b1': field 'labels': class 'memo' is not one the model knows"):
        model.recode(ids, data, "f", IDS)
    tags = LabelSpace("multilabel", ("a", "b", "c"))
    data, matrix = infer(np.array(["c", "", "c|a", "a", "c", "a"]), "f", IDS, label_sets=True)
    np.testing.assert_array_equal(tags.recode(matrix, data, "f", IDS)[:, 1], 0)
    np.testing.assert_array_equal(tags.recode(matrix, data, "f", IDS)[2], [1, 0, 1])


def test_merge_unions_the_classes_of_parts():
    assert merge([(BINARY, np.array([0, 1])), (BINARY, np.array([1]))]) == BINARY
    classes = LabelSpace("multiclass", ("0", "2", "10"))
    assert merge([(BINARY, np.array([0, 1])), (classes, None)]).classes == ("0", "1", "2", "10")
    assert merge([(BINARY, np.array([1])), (LabelSpace("multiclass", ("2", "3")), None)]).classes == ("1", "2", "3")
    tags = [(LabelSpace("multilabel", ("b",)), None), (LabelSpace("multilabel", ("a", "b")), None)]
    assert merge(tags).classes == ("b", "a")


def test_losses_weigh_classes_by_the_training_balance():
    labels = np.array([0, 0, 0, 1, 2, 2])
    space = LabelSpace("multiclass", ("x", "y", "z"))
    criterion = space.criterion(labels)
    np.testing.assert_allclose(criterion.weight.numpy(), [6 / 9, 6 / 3, 6 / 6], rtol=1e-6)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    weights = criterion.weight.numpy()[labels]
    expected = -(weights * torch.log_softmax(logits, 1).numpy()[np.arange(6), labels]).sum() / weights.sum()
    assert criterion(logits, torch.tensor(labels, dtype=torch.float32)).item() == pytest.approx(expected, rel=1e-5)
    tags = LabelSpace("multilabel", ("a", "b"))
    matrix = np.array([[1, 0], [1, 1], [0, 0], [0, 0]])
    np.testing.assert_allclose(tags.criterion(matrix).pos_weight.numpy(), [2 / 2, 3 / 1])


def test_multiclass_metrics_agree_with_scikit_learn(rng):
    labels = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200) * 0.5 + np.eye(4)[labels] * 0.5 * rng.random((200, 1))
    probs /= probs.sum(1, keepdims=True)
    m = multiclass_metrics(labels, probs, ("a", "b", "c", "d"))
    pred = probs.argmax(1)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(labels, probs))
    assert np.trace(m["confusion_matrix"]["counts"]) == int((pred == labels).sum())
    assert LabelSpace("multiclass", ("a", "b", "c", "d")).decide(probs, None).tolist() == pred.tolist()


def test_multilabel_metrics_and_thresholds_agree_with_scikit_learn(rng):
    labels = (rng.random((150, 3)) < 0.4).astype(int)
    probs = np.clip(labels * 0.4 + rng.random((150, 3)) * 0.6, 0, 1)
    space = LabelSpace("multilabel", ("a", "b", "c"))
    thresholds = space.tune_threshold(labels, probs, "f1")
    assert len(thresholds) == 3 and all(0 < t < 1 for t in thresholds)
    m = multilabel_metrics(labels, probs, thresholds, space.classes)
    pred = (probs >= np.array(thresholds)).astype(int)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, average="macro"))
    assert m["roc_auc_micro"] == pytest.approx(roc_auc_score(labels, probs, average="micro"))
    assert m["f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(labels, pred))
    # each label's threshold is the binary search on that label alone
    assert thresholds[1] == BINARY.tune_threshold(labels[:, 1], probs[:, 1], "f1")


def test_macro_bootstrap_matches_scikit_learn_per_resample(rng):
    labels = rng.integers(0, 3, 40)
    probs = rng.dirichlet(np.ones(3), 40)
    space = LabelSpace("multiclass", ("a", "b", "c"))
    ci = bootstrap_ci(labels, probs, None, n_boot=30, seed=4, level=0.5, space=space)
    rows = np.random.default_rng(4).integers(0, 40, (30, 40))
    aucs, f1s = [], []
    for r in rows:
        y, p = labels[r], probs[r]
        present = [k for k in range(3) if 0 < (y == k).sum() < 40]
        aucs.append(np.mean([roc_auc_score(y == k, p[:, k]) for k in present]))
        f1s.append(f1_score(y, p.argmax(1), labels=range(3), average="macro", zero_division=0))
    np.testing.assert_allclose(ci["roc_auc"], np.percentile(aucs, [25, 75]))
    np.testing.assert_allclose(ci["f1"], np.percentile(f1s, [25, 75]))


def test_splits_need_every_class_in_training():
    bags = BagSet([np.ones((2, 3), np.float32)] * 10, np.zeros(10, dtype=int), np.arange(10).astype(str),
                  split=np.array(["train"] * 4 + ["val"] * 3 + ["test"] * 3),
                  label_space=LabelSpace("multiclass", ("x", "y", "z")))
    bags.labels = np.array([0, 1, 0, 0, 0, 1, 2, 0, 2, 1])
    with pytest.raises(DataError, match="split 'train' has no bags of class 'z'"):
        split_parts(bags)
    bags.labels = np.array([0, 1, 2, 0, 0, 1, 2, 0, 2, 1])
    assert {name: len(part) for name, part in split_parts(bags).items()} == {"train": 4, "val": 3, "test": 3}


def test_figures_sample_multilabel_bags_round_robin_over_their_rarest_label():
    space = LabelSpace("multilabel", ("common", "rare"))
    labels = np.array([[1, 0], [1, 0], [0, 0], [1, 0], [1, 1], [1, 0]])
    assert set(space.display_sample(labels, 3).tolist()) >= {2, 4}  # the unlabelled and the rare bag


def test_prediction_columns_name_the_classes():
    space = LabelSpace("multiclass", ("a", "b"))
    columns = space.prediction_columns(np.array([[0.2, 0.8], [0.6, 0.4]]), None)
    assert list(columns) == ["prob_a", "prob_b", "pred"] and columns["pred"].tolist() == ["b", "a"]
    tags = LabelSpace("multilabel", ("x", "y"))
    columns = tags.prediction_columns(np.array([[0.2, 0.8], [0.6, 0.4]]), [0.5, 0.3])
    assert columns["pred_x"].tolist() == [0, 1] and columns["pred_y"].tolist() == [1, 1]


def test_names_that_look_like_numbers_stay_names(tmp_path):
    from arcmil.data import load_bags, save_bags
    from arcmil.data.store import convert_to_store

    space, ids = infer(np.array(["01", "02", "10", "01", "02", "10"]), "f", IDS)
    assert space.classes == ("01", "02", "10") and space.names(ids).tolist() == ["01", "02", "10"] * 2
    bags = BagSet([np.ones((2, 3), np.float32)] * 6, np.array(["07", "7", "07", "7", "07", "7"]), IDS)
    from arcmil.data import validate

    bags = validate(bags)
    assert bags.label_space.classes == ("07", "7")
    convert_to_store(save_bags(bags, tmp_path / "b.npz"), tmp_path / "store")
    back = load_bags(tmp_path / "store")
    assert back.label_space == bags.label_space and (back.labels == bags.labels).all()


def test_multilabel_splits_and_folds_keep_every_labels_share(rng):
    from arcmil.data import assign_split
    from arcmil.data.prepare import cv_splits

    labels = np.zeros((200, 4), dtype=int)
    labels[:7, 0] = 1  # a rare label: 7 bags
    labels[rng.permutation(200)[:30], 1] = 1
    labels[rng.permutation(200)[:90], 2] = 1
    labels[rng.permutation(200)[:120], 3] = 1
    bags = BagSet([np.ones((2, 3), np.float32)] * 200, labels, np.arange(200).astype(str),
                  label_space=LabelSpace("multilabel", ("a", "b", "c", "d")))
    split = assign_split(bags, seed=0).split
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        part = labels[split == name]
        assert abs(len(part) - share * 200) <= 1
        assert (np.abs(part.sum(0) - share * labels.sum(0)) <= 1).all(), name  # each label in proportion
    assert (split == assign_split(bags, seed=0).split).all()  # seeded
    tests = []
    for _, _, _, fold in cv_splits(labels, 5, [3]):
        assert (np.abs(labels[fold == "test"].sum(0) - labels.sum(0) / 5) <= 1).all()
        tests.append(np.flatnonzero(fold == "test"))
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(200))  # folds partition the bags


def test_class_folds_are_scikit_learns_stratified_folds(rng):
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from arcmil.data.prepare import cv_splits

    labels = rng.integers(0, 3, 90)
    folds = StratifiedKFold(5, shuffle=True, random_state=4).split(np.zeros(90), labels)
    for (_, _, _, split), (train_full, test) in zip(cv_splits(labels, 5, [4], val_fraction=0.2), folds):
        train, val = train_test_split(train_full, test_size=0.2, stratify=labels[train_full], random_state=4)
        for name, index in (("train", train), ("val", val), ("test", test)):
            np.testing.assert_array_equal(np.flatnonzero(split == name), np.sort(index))


def test_validation_needs_every_class_for_calibration():
    bags = BagSet([np.ones((2, 3), np.float32)] * 9, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2]), np.arange(9).astype(str),
                  split=np.array(["train"] * 3 + ["val"] * 3 + ["test"] * 3),
                  label_space=LabelSpace("multiclass", ("x", "y", "z")))
    bags.labels = np.array([0, 1, 2, 0, 1, 1, 0, 1, 2])
    with pytest.raises(DataError, match="split 'val' has no bags of class 'z'"):
        split_parts(bags)


def test_a_multilabel_model_reads_data_with_one_label_per_bag():
    model = LabelSpace("multilabel", ("a", "b", "c"))
    data, ids = infer(np.array(["c", "a", "c", "b", "a", "a"]), "f", IDS)
    assert data.kind == "multiclass"
    np.testing.assert_array_equal(model.recode(ids, data, "f", IDS)[:2], [[0, 0, 1], [1, 0, 0]])


def _table(path, labels, column="label"):
    """A one-window-per-bag CSV with the given label cells, written as text."""
    rows = [f"b{i},{cell},{i}.5" for i, cell in enumerate(labels)]
    path.write_text(f"bag_id,{column},emb_0\n" + "\n".join(rows) + "\n")
    return path


def test_a_csv_label_column_keeps_names_that_look_like_numbers(tmp_path):
    from arcmil.data import load_bags
    from arcmil.data.store import convert_to_store

    padded = load_bags(_table(tmp_path / "padded.csv", ["07", "7", "07", "7", " 7", "07"]))
    assert padded.label_space.classes == ("07", "7") and padded.labels.tolist() == [0, 1, 0, 1, 1, 0]
    convert_to_store(tmp_path / "padded.csv", tmp_path / "store", chunk_windows=2)  # chunks of 2 bags
    assert load_bags(tmp_path / "store").label_space.classes == ("07", "7")
    written_as_floats = load_bags(_table(tmp_path / "floats.csv", ["1.0", "0.0", "1.0", "0.0", "0.0", "1.0"]))
    assert written_as_floats.label_space == BINARY and written_as_floats.labels.tolist() == [1, 0, 1, 0, 0, 1]
    convert_to_store(_table(tmp_path / "signs.csv", ["-1", "-1", "1", "-1", "1", "-1"]), tmp_path / "signs",
                     chunk_windows=2)  # a chunk of -1 alone and chunks of both: one binary space
    signs = load_bags(tmp_path / "signs")
    assert signs.label_space == BINARY and signs.labels.tolist() == [0, 0, 1, 0, 1, 0]
    # sorted -1, 0, 1: the first chunk holds -1 alone, yet the store reads three classes, as the file does
    sorted_path = _table(tmp_path / "sorted.csv", ["-1"] * 4 + ["0"] * 4 + ["1"] * 4)
    convert_to_store(sorted_path, tmp_path / "sorted", chunk_windows=4)
    whole, stored = load_bags(sorted_path), load_bags(tmp_path / "sorted")
    assert whole.label_space.classes == stored.label_space.classes == ("-1", "0", "1")
    np.testing.assert_array_equal(stored.labels, whole.labels)
    ids = load_bags(_table(tmp_path / "ids.csv", ["2", "10", "2", "10", "3", "3"]))
    assert ids.label_space.classes == ("2", "3", "10")
    with pytest.raises(DataError, match="ids.csv: bag 'b4': field 'labels': empty label"):
        load_bags(_table(tmp_path / "ids.csv", ["2", "10", "2", "10", "", "3"]))


def test_a_multilabel_model_refuses_label_columns_that_leave_out_one_of_its_labels(tmp_path):
    from arcmil.data import load_bags

    path = tmp_path / "two.csv"
    path.write_text("bag_id,label_a,label_c,emb_0\nx,1,0,0.5\ny,0,1,1.5\n")
    model = LabelSpace("multilabel", ("a", "b", "c"))
    with pytest.raises(DataError, match="two.csv: field 'labels': the labels name no column for 'b'"):
        load_bags(path).in_space(model)
    path.write_text("bag_id,label_a,label_b,label_c,emb_0\nx,1,0,0,0.5\ny,0,0,1,1.5\n")
    np.testing.assert_array_equal(load_bags(path).in_space(model).labels, [[1, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize("space", [BINARY, LabelSpace("multiclass", ("07", "7", "b")),
                                   LabelSpace("multilabel", ("x", "y", "z"))])
def test_predictions_read_back_and_pool_into_scikit_learns_micro_average(space, rng):
    n, k = 40, len(space.classes)
    if space.binary:
        labels, probs = rng.integers(0, 2, n), rng.random(n)
    elif space.kind == "multiclass":
        labels, probs = rng.integers(0, k, n), rng.dirichlet(np.ones(k), n)
    else:
        labels, probs = rng.integers(0, 2, (n, k)), rng.random((n, k))
    threshold = None if space.kind == "multiclass" else (0.5 if space.binary else [0.5] * k)
    frame = pd.DataFrame({**space.table_columns(labels), **space.prediction_columns(probs, threshold)})
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype={"label": str} if space.kind == "multiclass"
                       else None)  # as predictions.csv is read back
    read_labels, read_probs = space.table_scores(back)
    np.testing.assert_array_equal(read_labels, labels)
    np.testing.assert_allclose(read_probs, probs, rtol=1e-12)
    truth, scores = space.pooled_one_vs_rest(labels, probs)
    onehot = np.eye(k, dtype=int)[labels] if space.kind == "multiclass" else labels
    expected = roc_auc_score(onehot, probs, average="micro") if not space.binary else roc_auc_score(labels, probs)
    assert roc_auc_score(truth, scores) == pytest.approx(expected, abs=1e-12)
