import numpy as np
import pytest

from arcmil.tasks import TASKS, make_task


@pytest.mark.parametrize("task", TASKS)
def test_tasks_are_seeded_unit_windows(task):
    a, b, c = (make_task(task, n_bags=60, dim=32, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.bags.gather(np.arange(60)), b.bags.gather(np.arange(60)))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.bags[0], c.bags[0])
    norms = np.linalg.norm(a.bags.gather(np.arange(60)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert a.dim == 32 and set(np.unique(a.labels)) == {0, 1}


def test_positives_hold_their_evidence_and_negatives_do_not():
    bags = make_task("order", n_bags=200, dim=64, seed=0)
    for label, marks in zip(bags.labels, bags.instance_labels):
        assert marks.sum() == (2 if label else 0)  # A and B windows of a positive document
    bags = make_task("sparse_presence", n_bags=200, dim=64, seed=0)
    for label, marks in zip(bags.labels, bags.instance_labels):
        assert (1 <= marks.sum() <= 2) if label else marks.sum() == 0


def test_order_negatives_include_the_reversed_pair():
    bags = make_task("order", n_bags=300, dim=64, seed=1)
    x = [np.asarray(b) for b in bags.bags]
    pos = [i for i in range(300) if bags.labels[i]]
    a_vec, b_vec = (np.mean([x[i][bags.instance_labels[i] == 1][k] for i in pos], axis=0) for k in (0, 1))
    # a negative whose best A match comes after its best B match, both close: B before A
    reversed_pairs = sum(1 for i in range(300) if not bags.labels[i]
                         and (x[i] @ a_vec).max() > 0.3 and (x[i] @ b_vec).max() > 0.3
                         and np.argmax(x[i] @ a_vec) > np.argmax(x[i] @ b_vec))
    assert reversed_pairs > 50


def test_imbalanced_and_variable_lengths():
    imbalanced = make_task("imbalanced", n_bags=2000, dim=16, seed=0)
    assert 0.05 < imbalanced.labels.mean() < 0.11
    lengths = make_task("variable_length", n_bags=300, dim=16, seed=0).lengths
    assert lengths.min() >= 5 and lengths.max() <= 60 and len(np.unique(lengths)) > 30


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope")
