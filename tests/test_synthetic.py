import numpy as np
import pytest

from arcmil.synthetic import TESTS, make_assumption_test, with_splits


def has_poison(bag):
    return bool((bag.mean(axis=1) < -5).any())


@pytest.mark.parametrize("test", TESTS)
def test_generators_are_seeded(test):
    a_train, a_test = make_assumption_test(test, n_train=20, n_test=10, seed=3)
    b_train, b_test = make_assumption_test(test, n_train=20, n_test=10, seed=3)
    for x, y in zip([*a_train.bags, *a_test.bags], [*b_train.bags, *b_test.bags]):
        np.testing.assert_array_equal(x, y)
    c_train, _ = make_assumption_test(test, n_train=20, n_test=10, seed=4)
    assert not np.array_equal(a_train.bags[0], c_train.bags[0])


@pytest.mark.parametrize("test", ["single_concept", "multi_concept"])
def test_poison_is_negative_in_training_and_positive_at_test(test):
    train, held_out = make_assumption_test(test, n_train=40, n_test=40, seed=0)
    assert [has_poison(b) for b in train.bags] == [y == 0 for y in train.labels]
    assert [has_poison(b) for b in held_out.bags] == [y == 1 for y in held_out.labels]


def test_false_frequency_repeats_a_concept_in_test_negatives():
    train, held_out = make_assumption_test("false_frequency", n_train=40, n_test=40, seed=0)

    def concept_windows(bag):
        return int((bag.mean(axis=1) > 1.5).sum())

    assert all(concept_windows(b) == (2 if y else 1) for b, y in zip(train.bags, train.labels))
    assert all(concept_windows(b) >= 35 for b, y in zip(held_out.bags, held_out.labels) if y == 0)


def test_with_splits_keeps_the_test_bags_apart():
    bags = with_splits(*make_assumption_test("single_concept", n_train=50, n_test=30, seed=1), seed=1)
    assert (bags.split == "test").sum() == 30 and (bags.split == "val").sum() == 10
    assert all(b.startswith("test") for b in bags.bag_ids[bags.split == "test"])
