"""Algorithmic unit tests for the MIL assumption (after Raff & Holt, NeurIPS 2023, "Reproducibility in
Multiple Instance Learning: a case for algorithmic unit tests"), our own generators.

Each test returns a training BagSet and a test BagSet drawn with one seeded numpy Generator. Windows
are unordered: background windows ~ N(0, I); concepts and the poison are tight clusters far away.
  * single_concept: positive bags hold 1–3 windows of concept A. A "poison" window appears in every
    negative *training* bag and in every positive *test* bag. A model that obeys the standard MIL
    assumption (only positive evidence counts) ignores the poison; one that learns "poison means
    negative" ranks the positive test bags last (test ROC-AUC below 0.5).
  * multi_concept: positive bags hold both concept A and concept B; negative bags hold one of them;
    the same poison arrangement.
  * false_frequency: positive bags hold one A and one B; negative bags hold copies of one concept —
    one copy in training, 35–45 copies at test time. A model that counts instead of checking
    presence mistakes the test negatives for positives.
``instance_labels`` mark concept windows of positive bags.
"""
from __future__ import annotations

import numpy as np

from arcmil.data import BagSet, validate

TESTS = ("single_concept", "multi_concept", "false_frequency")


class _Draw:
    def __init__(self, rng: np.random.Generator, dim: int):
        self.rng, self.dim = rng, dim
        self.center = {"A": np.full(dim, 2.0), "B": np.full(dim, 3.0), "poison": np.full(dim, -10.0)}

    def background(self, n: int) -> np.ndarray:
        return self.rng.standard_normal((n, self.dim))

    def concept(self, name: str, n: int = 1) -> np.ndarray:
        return self.center[name] + 0.1 * self.rng.standard_normal((n, self.dim))

    def bag(self, parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Stack (windows, instance label) parts and shuffle: the windows have no order."""
        x = np.concatenate([p for p, _ in parts])
        marks = np.concatenate([np.full(len(p), m) for p, m in parts])
        order = self.rng.permutation(len(x))
        return x[order].astype(np.float32), marks[order].astype(np.int64)


def _bag(draw: _Draw, test: str, label: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = draw.rng
    parts = [(draw.background(int(rng.integers(3, 10))), 0)]
    if test == "false_frequency":
        if label:
            parts += [(draw.concept("A"), 1), (draw.concept("B"), 1)]
        else:
            copies = 1 if train else int(rng.integers(35, 46))
            parts.append((draw.concept("A" if rng.random() < 0.5 else "B", copies), 0))
        return draw.bag(parts)
    if label:
        k = int(rng.integers(1, 4))
        parts.append((draw.concept("A", k), 1))
        if test == "multi_concept":
            parts.append((draw.concept("B", int(rng.integers(1, 4))), 1))
    elif test == "multi_concept":
        parts.append((draw.concept("A" if rng.random() < 0.5 else "B"), 0))
    if (not label and train) or (label and not train):  # the poison: negative in training, positive at test
        parts.append((draw.concept("poison"), 0))
    return draw.bag(parts)


def make_assumption_test(test: str, *, n_train: int = 400, n_test: int = 200, dim: int = 16,
                         seed: int = 0) -> tuple[BagSet, BagSet]:
    """(train, test) BagSets of ``test`` (one of TESTS), half positive each, seeded."""
    if test not in TESTS:
        raise ValueError(f"unknown MIL-assumption test {test!r}; use one of {', '.join(TESTS)}")
    draw = _Draw(np.random.default_rng(seed), dim)

    def bags(n: int, train: bool, prefix: str) -> BagSet:
        labels = np.arange(n) % 2
        made = [_bag(draw, test, int(y), train) for y in labels]
        return validate(BagSet([b for b, _ in made], labels, np.array([f"{prefix}{i}" for i in range(n)]),
                               instance_labels=[m for _, m in made], source=f"{test}(seed={seed}, {prefix})"))

    return bags(n_train, True, "train"), bags(n_test, False, "test")


def with_splits(train: BagSet, test: BagSet, *, val_fraction: float = 0.2, seed: int = 0) -> BagSet:
    """One BagSet for the pipeline: ``train`` split stratified into train/val, ``test`` as the test split."""
    from sklearn.model_selection import train_test_split

    _, val = train_test_split(np.arange(len(train)), test_size=val_fraction, stratify=train.labels, random_state=seed)
    split = np.full(len(train), "train", dtype="<U5")
    split[val] = "val"
    return validate(BagSet(
        bags=list(train.bags) + list(test.bags), labels=np.concatenate([train.labels, test.labels]),
        bag_ids=np.concatenate([train.bag_ids, test.bag_ids]),
        split=np.concatenate([split, np.full(len(test), "test")]),
        instance_labels=train.instance_labels + test.instance_labels, source=test.source.replace(", test)", ")")))
