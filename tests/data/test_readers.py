"""Every input format reads to the same bags; malformed files fail with one line naming file/bag/field."""
import numpy as np
import pandas as pd
import pytest
import torch

from arcmil.data import BagSet, Normalizer, assign_split, load_bags, save_bags, split_parts
from arcmil.errors import DataError


def bagset(lengths=(3, 5, 2, 4), dim=6, seed=0):
    rng = np.random.default_rng(seed)
    bags = [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]
    labels = np.arange(len(lengths)) % 2
    return BagSet(bags, labels, np.array([f"b{i}" for i in range(len(lengths))]),
                  instance_labels=[np.zeros(n, dtype=np.int64) for n in lengths])


def same(a: BagSet, b: BagSet):
    assert list(a.bag_ids) == list(b.bag_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    for x, y in zip(a.bags, b.bags):
        np.testing.assert_allclose(x, y, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".csv", ".parquet"])
def test_round_trip_every_format_with_variable_lengths(tmp_path, suffix):
    bs = bagset()
    back = load_bags(save_bags(bs, tmp_path / f"bags{suffix}"))
    same(bs, back)
    assert [len(i) for i in back.instance_labels] == [3, 5, 2, 4]


def test_dense_npz_with_mask(tmp_path):
    emb = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=bool)
    np.savez(tmp_path / "d.npz", embeddings=emb, labels=[0, 1, 1], mask=mask, split=["train", "val", "TEST "])
    bs = load_bags(tmp_path / "d.npz")
    assert list(bs.lengths) == [2, 4, 1]
    np.testing.assert_array_equal(bs.bags[0], emb[0, :2])
    assert list(bs.split) == ["train", "val", "test"]


def test_k_embeddings_per_window_are_averaged(tmp_path):
    emb = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)  # (B, N, K, D)
    np.savez(tmp_path / "k.npz", embeddings=emb, labels=[0, 1])
    bs = load_bags(tmp_path / "k.npz")
    np.testing.assert_allclose(bs.bags[1], emb[1].mean(axis=1), rtol=1e-6)


def test_pt_list_of_tensors(tmp_path):
    bags = [torch.randn(3, 4), torch.randn(6, 4)]
    torch.save({"embeddings": bags, "labels": torch.tensor([1, 0]), "bag_ids": ["x", "y"]}, tmp_path / "l.pt")
    bs = load_bags(tmp_path / "l.pt")
    assert list(bs.lengths) == [3, 6] and list(bs.bag_ids) == ["x", "y"]
    np.testing.assert_allclose(bs.bags[1], bags[1].numpy())


def test_csv_rows_sharing_a_window_are_averaged_in_window_order(tmp_path):
    rows = [  # bag a: window 1 listed first, window 0 has two embeddings
        {"bag_id": "a", "label": 1, "window": 1, "emb_0": 5.0, "emb_1": 5.0},
        {"bag_id": "a", "label": 1, "window": 0, "emb_0": 1.0, "emb_1": 2.0},
        {"bag_id": "a", "label": 1, "window": 0, "emb_0": 3.0, "emb_1": 4.0},
        {"bag_id": "b", "label": 0, "window": 0, "emb_0": 0.0, "emb_1": 1.0},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    bs = load_bags(tmp_path / "t.csv")
    np.testing.assert_array_equal(bs.bags[0], [[2.0, 3.0], [5.0, 5.0]])
    assert list(bs.bag_ids) == ["a", "b"] and list(bs.labels) == [1, 0]


def test_unlabelled_data_loads_for_prediction(tmp_path):
    np.savez(tmp_path / "u.npz", embeddings=np.ones((2, 3, 4), np.float32))
    assert load_bags(tmp_path / "u.npz", require_labels=False).labels is None
    with pytest.raises(DataError, match="field 'labels'"):
        load_bags(tmp_path / "u.npz")


def _raw(directory, name, content: bytes):
    (directory / name).write_bytes(content)
    return directory / name


def _npz(tmp_path, **arrays):
    base = {"embeddings": np.ones((4, 3, 2), np.float32), "labels": np.array([0, 1, 0, 1])}
    np.savez(tmp_path / "bad.npz", **{**base, **arrays})
    return tmp_path / "bad.npz"


def _nan_embeddings():
    emb = np.ones((4, 3, 2), np.float32)
    emb[2, 1, 0] = np.nan
    return emb


BAD_INPUTS = [
    ("missing file", lambda p: p / "nope.npz", "file not found"),
    ("directory", lambda p: p, "is a directory"),
    ("empty file", lambda p: _raw(p, "e.npz", b""), "file is empty"),
    ("truncated npz", lambda p: _raw(p, "t.npz", b"PK\x03\x04junk"), "not a readable .npz"),
    ("bad suffix", lambda p: _raw(p, "x.txt", b"1"), "unsupported suffix"),
    ("missing embeddings", lambda p: np.savez(p / "m.npz", labels=[0]) or p / "m.npz", "field 'embeddings'"),
    ("NaN window", lambda p: _npz(p, embeddings=_nan_embeddings()), "bag '2': field 'embeddings': non-finite value in window 1"),
    ("label 1.5", lambda p: _npz(p, labels=np.array([0, 1, 1.5, 1])), "bag '2': field 'labels': label 1.5"),
    ("label count", lambda p: _npz(p, labels=np.array([0, 1])), "field 'labels'"),
    ("duplicate ids", lambda p: _npz(p, bag_ids=np.array(["a", "b", "a", "c"])), "bag 'a': field 'bag_ids'"),
    ("unknown split", lambda p: _npz(p, split=np.array(["train", "dev", "val", "test"])), "bag '1': field 'split': unknown split 'dev'"),
    ("empty bag", lambda p: _npz(p, mask=np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1]], bool)), "bag '1': field 'embeddings': empty bag"),
    ("lengths mismatch", lambda p: np.savez(p / "f.npz", embeddings=np.ones((5, 2)), lengths=[2, 2], labels=[0, 1]) or p / "f.npz", "field 'lengths'"),
    ("object array", lambda p: np.savez(p / "o.npz", embeddings=np.array([{"a": 1}], dtype=object), labels=[0]) or p / "o.npz", "without unpickling"),
]


def _csv(p, frame):
    frame.to_csv(p / "t.csv", index=False)
    return p / "t.csv"


BASE = pd.DataFrame({"bag_id": ["a", "a", "b"], "label": [1, 1, 0], "emb_0": [0.1, 0.2, 0.3], "emb_1": [1.0, 1.0, 1.0]})
BAD_INPUTS += [
    ("csv no emb", lambda p: _csv(p, BASE[["bag_id", "label"]]), "field 'emb_*'"),
    ("csv missing emb column", lambda p: _csv(p, BASE.drop(columns="emb_0").assign(emb_2=1.0)), "field 'emb_0'"),
    ("csv label column yes", lambda p: _csv(p, BASE.drop(columns="label").assign(label_x=["yes", "yes", 0])),
     "bag 'a': field 'label_x': value 'yes' is not 0 or 1"),
    ("csv label disagrees", lambda p: _csv(p, BASE.assign(label=[1, 0, 0])), "bag 'a': field 'label': rows disagree"),
    ("csv text embedding", lambda p: _csv(p, BASE.assign(emb_1=["x", "y", "z"])), "field 'emb_1'"),
    ("csv no bag_id", lambda p: _csv(p, BASE.drop(columns="bag_id")), "field 'bag_id'"),
    ("parquet corrupt", lambda p: _raw(p, "c.parquet", b"PAR1garbage"), "not a readable table"),
    ("pt pickled object", lambda p: torch.save({"embeddings": torch.ones(2, 3, 4), "labels": torch.tensor([0, 1]), "x": BagSet}, p / "o.pt") or p / "o.pt", "refused"),
    ("pt not a dict", lambda p: torch.save(torch.ones(2), p / "n.pt") or p / "n.pt", "expected a dict"),
]


@pytest.mark.parametrize("case,make,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_line_error_naming_file_and_field(tmp_path, case, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_bags(path)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert str(path) in text


def test_split_needs_both_classes(tmp_path):
    bs = bagset(lengths=(2,) * 6)
    bs.split = np.array(["train", "train", "val", "val", "test", "test"])
    bs.labels = np.array([0, 1, 0, 0, 1, 0])
    with pytest.raises(DataError, match="split 'val' holds only class 0"):
        split_parts(bs)
    bs.split = np.array(["train"] * 4 + ["test"] * 2)
    with pytest.raises(DataError, match="split 'val' has no bags"):
        split_parts(bs)


def test_stratified_split_is_seeded_and_keeps_class_ratio(small_bags):
    a, b = assign_split(small_bags, seed=3), assign_split(small_bags, seed=3)
    np.testing.assert_array_equal(a.split, b.split)
    assert not np.array_equal(a.split, assign_split(small_bags, seed=4).split)
    counts = {s: int((a.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 84, "val": 18, "test": 18}
    rate = small_bags.labels.mean()
    for s in ("train", "val", "test"):
        assert abs(a.labels[a.split == s].mean() - rate) < 0.06


def test_normalizers():
    bs = bagset()
    l2 = Normalizer.fit("l2", bs)(bs)
    np.testing.assert_allclose([np.linalg.norm(b, axis=1) for b in l2.bags][0], 1.0, rtol=1e-6)
    std = Normalizer.fit("standardize", bs)
    windows = np.concatenate(std(bs).bags)
    np.testing.assert_allclose(windows.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(windows.std(0), 1, atol=1e-4)
    assert Normalizer.from_dict(std.to_dict()) == std


def test_mixed_dimension_and_ragged_k_in_pt_lists(tmp_path):
    torch.save({"embeddings": [torch.randn(3, 4), torch.randn(2, 5)], "labels": torch.tensor([0, 1])},
               tmp_path / "mixed.pt")
    with pytest.raises(DataError, match="bag '1': field 'embeddings': embedding dimension 5 differs from 4"):
        load_bags(tmp_path / "mixed.pt")
    ragged_k = [torch.randn(3, 2, 4), torch.randn(2, 5, 4)]  # (n_i, K_i, D): K differs per bag
    torch.save({"embeddings": ragged_k, "labels": torch.tensor([0, 1])}, tmp_path / "k.pt")
    bs = load_bags(tmp_path / "k.pt")
    np.testing.assert_allclose(bs.bags[1], ragged_k[1].mean(1).numpy(), rtol=1e-6)
