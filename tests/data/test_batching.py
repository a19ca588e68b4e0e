"""Packed bags and the vectorised loader: the same padded batches as stacking bag by bag."""
import numpy as np
import pytest
import torch

from arcmil.data import BagSet, Normalizer, collate, make_loader, scoring_loader
from arcmil.data.batching import length_batches
from arcmil.data.packed import PackedBags
from arcmil.data.prepare import window_chunks


def ragged(lengths, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    bags = [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]
    return BagSet(bags, np.arange(len(lengths)) % 2, np.array([f"b{i}" for i in range(len(lengths))]))


def test_packed_bags_index_subset_and_gather():
    bs = ragged([3, 1, 4, 2])
    packed = PackedBags.from_list(bs.bags)
    for i, bag in enumerate(bs.bags):
        np.testing.assert_array_equal(packed[i], bag)
    sub = packed.subset(np.array([2, 0]))
    assert sub.windows is packed.windows, "a subset must share the window array"
    np.testing.assert_array_equal(sub.gather(np.array([1, 0])), np.concatenate([bs.bags[0], bs.bags[2]]))


@pytest.mark.parametrize("normalize", ["none", "l2"])
def test_collate_matches_padding_bag_by_bag(normalize):
    bs = ragged([3, 1, 4, 2])
    norm = Normalizer(normalize)
    batch = collate(bs, [2, 1, 3], norm)
    assert batch.x.shape == (3, 4, 5) and batch.mask.sum(1).tolist() == [4, 1, 2]
    for row, i in enumerate([2, 1, 3]):
        n = len(bs.bags[i])
        torch.testing.assert_close(batch.x[row, :n], norm.apply(torch.from_numpy(bs.bags[i])))
        assert (batch.x[row, n:] == 0).all()
    assert batch.y.tolist() == [0.0, 1.0, 1.0] and batch.index.tolist() == [2, 1, 3]


def test_shuffled_loader_is_seeded_and_visits_every_bag_once_per_epoch():
    bs = ragged(np.arange(1, 40) % 7 + 1)
    orders = []
    for _ in range(2):
        loader = make_loader(bs, 8, shuffle=True, seed=3)
        orders.append([np.concatenate([b.index.numpy() for b in loader]) for _ in range(2)])
    np.testing.assert_array_equal(orders[0][0], orders[1][0])  # same seed, same epochs
    np.testing.assert_array_equal(orders[0][1], orders[1][1])
    assert sorted(orders[0][0]) == list(range(len(bs))) and not np.array_equal(orders[0][0], orders[0][1])


def test_bucketing_groups_similar_lengths_without_losing_bags():
    lengths = np.random.default_rng(0).integers(1, 200, size=300)
    bs = ragged(lengths, dim=2)
    plain = sum(b.mask.numel() for b in make_loader(bs, 10, shuffle=True, seed=0))
    loader = make_loader(bs, 10, shuffle=True, seed=0, bucket=True)
    batches = list(loader)
    assert sorted(np.concatenate([b.index.numpy() for b in batches])) == list(range(300))
    padded = sum(b.mask.numel() for b in batches)
    assert padded < 0.6 * plain, (padded, plain)  # far less padding than random batches


def test_bucketing_leaves_equal_length_bags_in_their_plain_shuffled_batches():
    bs = ragged([10] * 50, dim=2)
    epochs = [[b.index.tolist() for b in make_loader(bs, 8, shuffle=True, seed=4, bucket=bucket)] for bucket in (0, 1)]
    assert epochs[0] == epochs[1]


def test_standardize_statistics_are_streamed_in_chunks():
    bs = ragged([30, 1, 17, 52, 4], seed=1)
    packed = PackedBags.from_list(bs.bags)
    chunks = list(window_chunks(packed, max_windows=20))
    assert len(chunks) > 3 and sum(len(c) for c in chunks) == 104
    norm = Normalizer.fit("standardize", bs)
    windows = np.concatenate(bs.bags).astype(np.float64)
    np.testing.assert_allclose(norm.mean, windows.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.std, windows.std(0), rtol=1e-10)


def test_scoring_batches_keep_a_long_bag_away_from_short_ones():
    assert [b.tolist() for b in length_batches(np.array([20_000, 5, 7, 9]), 16)] == [[1, 2, 3], [0]]
    assert [b.tolist() for b in length_batches(np.array([2_000, 5, 7, 9]), 16)] == [[1, 2, 3], [0]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 3_000, size=500)
    batches = length_batches(lengths, 16, max_tokens=4_096)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))  # every bag once
    def fits(padded, real):  # the token budget, and past 1,024 padded windows at most 1.5 x the real ones
        return padded <= 4_096 and (padded <= 1_024 or padded <= 1.5 * real)

    for batch, following in zip(batches, [*batches[1:], None]):
        real = lengths[batch].sum()
        assert len(batch) <= 16 and (len(batch) == 1 or fits(len(batch) * lengths[batch].max(), real))
        if following is not None and len(batch) < 16:  # cut only where the next bag would break a rule
            assert not fits((len(batch) + 1) * lengths[following[0]], real + lengths[following[0]])
    short = length_batches(np.full(40, 10), 16)  # short bags: the usual batches of 16
    assert [len(b) for b in short] == [16, 16, 8]


def test_scores_from_length_sorted_batches_equal_plain_batches():
    from arcmil.models import build_model
    from arcmil.scoring import evaluate

    bs = ragged([40, 3, 17, 1, 25, 8, 60, 2], dim=8)
    torch.manual_seed(0)
    model = build_model("transmil", input_dim=8, d_model=16, nhead=2, dim_feedforward=32)
    plain = evaluate(model, make_loader(bs, 3))
    sorted_ = evaluate(model, scoring_loader(bs, 3))
    np.testing.assert_array_equal(sorted_.index, np.arange(8))
    np.testing.assert_allclose(sorted_.probs, plain.probs, rtol=1e-5, atol=1e-6)
    for a, b in zip(sorted_.weights, plain.weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
