"""Seeded ArcFace-like bag tasks: the recipe benchmark's data (and the learning tests').

Every window is a 256-d unit vector near one of 40 prototypes, ``unit(p + noise * g / sqrt(D))``
with g ~ N(0, I) (noise 1.0 puts a window at cosine ~0.7 to its prototype, as ArcFace windows of one
kind are). A document mixes three background prototypes; the task decides which special windows
it holds and where. Prototype 0 is P (positive), 1 is A, 2 is B; the rest are background.

  * sparse_presence: positive iff 1–2 windows of P.
  * noisy_presence: as sparse, noisier windows, and P's near twin P' (cosine 0.98 to P) appears
    in half of all documents: the negatives only differ by P vs P'.
  * cooccurrence: positive iff A and B both occur; negatives hold A alone, B alone or neither.
  * order: positive iff an A window comes before a B window; negatives hold B before A, or one alone.
  * imbalanced: sparse presence with 8% positive documents (3,000 documents by default).
  * variable_length: sparse presence in documents of 5–60 windows (1,000 documents by default).
  * demo: ``arcmil.demo.make_demo_bags`` (witness windows or an ordered motif).

``instance_labels`` mark the windows that make a positive document positive.

Beyond binary (``make_multiclass_task``, ``make_multilabel_task``): each class or label has its own
evidence of one of three kinds, so that the model families separate as on the binary tasks:
``witness`` (one or two windows of its prototype), ``pair`` (its two prototypes C and D together, in
either order) and ``order`` (its A before its B). Documents also carry distractors of other classes'
evidence: one of a pair alone, or B before A, so only co-occurrence and order tell them apart.
"""
from __future__ import annotations

import numpy as np

from arcmil.data.bagset import BagSet, validate
from arcmil.demo import make_demo_bags

TASKS = ("sparse_presence", "noisy_presence", "cooccurrence", "order", "imbalanced", "variable_length", "demo")
MULTI_TASKS = ("multiclass4", "multilabel5")  # make_multiclass_task(4) and make_multilabel_task(5)
P, A, B = 0, 1, 2
N_SPECIAL = 3


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _Documents:
    """Draws windows around fixed prototypes with one seeded Generator."""

    def __init__(self, rng: np.random.Generator, dim: int, n_prototypes: int, noise: float):
        self.rng, self.dim, self.noise = rng, dim, noise
        self.prototypes = _unit(rng.standard_normal((n_prototypes, dim)))
        # P': cosine 0.98 to P, the rest of it orthogonal to P (at noise 1.5 one window tells them
        # apart with ROC-AUC ~0.93: the bag label is noisy, not impossible)
        other = rng.standard_normal(dim)
        other = _unit(other - (other @ self.prototypes[P]) * self.prototypes[P])
        self.twin = 0.98 * self.prototypes[P] + np.sqrt(1 - 0.98**2) * other

    def windows(self, centers: np.ndarray) -> np.ndarray:
        """centers (n, D) -> (n, D) float32 unit windows."""
        g = self.rng.standard_normal(centers.shape) / np.sqrt(self.dim)
        return _unit(centers + self.noise * g).astype(np.float32)

    def background(self, n: int) -> np.ndarray:
        """(n, D) centers: each window one of three background prototypes of this document."""
        topics = N_SPECIAL + self.rng.choice(len(self.prototypes) - N_SPECIAL, size=3, replace=False)
        return self.prototypes[self.rng.choice(topics, size=n)]


def _document(docs: _Documents, task: str, label: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One document's windows (n, D) and instance labels (n,)."""
    rng = docs.rng
    centers, marks = docs.background(n), np.zeros(n, dtype=np.int64)
    if task in ("cooccurrence", "order"):
        kind = rng.random()
        i, j = sorted(rng.choice(n, size=2, replace=False))
        if label:
            centers[i], centers[j] = docs.prototypes[A], docs.prototypes[B]  # A before B (order: in this order)
            if task == "cooccurrence" and rng.random() < 0.5:
                centers[i], centers[j] = centers[j].copy(), centers[i].copy()
            marks[[i, j]] = 1
        elif task == "order" and kind < 0.5:  # B before A
            centers[i], centers[j] = docs.prototypes[B], docs.prototypes[A]
        elif kind < (0.75 if task == "order" else 2 / 3):  # one of the two alone
            centers[i] = docs.prototypes[A if rng.random() < 0.5 else B]
        return docs.windows(centers), marks
    if task == "noisy_presence" and rng.random() < 0.5:
        centers[rng.choice(n, size=rng.integers(1, 3), replace=False)] = docs.twin
    if label:
        where = rng.choice(n, size=rng.integers(1, 3), replace=False)
        centers[where], marks[where] = docs.prototypes[P], 1
    return docs.windows(centers), marks


def make_task(task: str, *, n_bags: int | None = None, dim: int = 256, n_prototypes: int = 40,
              seed: int = 0) -> BagSet:
    """A validated BagSet of ``task`` (one of TASKS or MULTI_TASKS), no split (the pipeline draws one), seeded."""
    if task not in TASKS + MULTI_TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS + MULTI_TASKS)}")
    if task == "multiclass4":
        return make_multiclass_task(4, n_bags=n_bags or 1500, dim=dim, seed=seed)
    if task == "multilabel5":
        return make_multilabel_task(5, n_bags=n_bags or 1500, dim=dim, seed=seed)
    if task == "demo":
        return make_demo_bags(n_bags or 1500, dim=dim, seed=seed)
    n_bags = n_bags or {"imbalanced": 3000, "variable_length": 1000}.get(task, 1500)
    rng = np.random.default_rng(seed)
    docs = _Documents(rng, dim, n_prototypes, noise=1.5 if task == "noisy_presence" else 1.0)
    positive_rate = 0.08 if task == "imbalanced" else 0.4
    labels = (rng.random(n_bags) < positive_rate).astype(np.int64)
    lengths = rng.integers(5, 61, size=n_bags) if task == "variable_length" else np.full(n_bags, 10)
    made = [_document(docs, task, int(y), int(n)) for y, n in zip(labels, lengths)]
    return validate(BagSet([w for w, _ in made], labels, np.array([f"doc{i:05d}" for i in range(n_bags)]),
                           instance_labels=[m for _, m in made], source=f"{task}(n_bags={n_bags}, seed={seed})"))


EVIDENCE_KINDS = ("order", "witness", "pair")  # cycled over the classes (after "none") or labels


class _Evidence:
    """One class's or label's evidence, with its own prototypes, placed into a document's centers."""

    def __init__(self, kind: str, prototypes: np.ndarray):
        self.kind, self.prototypes = kind, prototypes  # (2, D); a witness uses the first

    def place(self, rng, centers: np.ndarray, free: list[int], marks: np.ndarray | None = None) -> None:
        """Put the evidence on free positions (taken from ``free``); mark them in ``marks`` if given."""
        count = rng.integers(1, 3) if self.kind == "witness" else 2
        where = sorted(free.pop(int(rng.integers(len(free)))) for _ in range(count))
        if self.kind == "witness":
            centers[where] = self.prototypes[0]
        else:
            first, second = (0, 1) if self.kind == "order" or rng.random() < 0.5 else (1, 0)
            centers[where[0]], centers[where[1]] = self.prototypes[first], self.prototypes[second]
        if marks is not None:
            marks[where] = 1

    def distract(self, rng, centers: np.ndarray, free: list[int]) -> None:
        """Evidence that is not this class's: one prototype of a pair alone, or B before A."""
        if self.kind == "pair":
            centers[free.pop(int(rng.integers(len(free))))] = self.prototypes[int(rng.integers(2))]
        elif self.kind == "order":
            i, j = sorted(free.pop(int(rng.integers(len(free)))) for _ in range(2))
            centers[i], centers[j] = self.prototypes[1], self.prototypes[0]


def _evidence(docs: _Documents, n: int) -> list[_Evidence]:
    """n evidences cycling over EVIDENCE_KINDS, each with two prototypes of its own (after the background's)."""
    return [_Evidence(EVIDENCE_KINDS[k % len(EVIDENCE_KINDS)], docs.prototypes[2 * k:2 * k + 2]) for k in range(n)]


def make_multiclass_task(n_classes: int = 4, *, n_bags: int = 1500, n_windows: int = 12, dim: int = 256,
                         seed: int = 0) -> BagSet:
    """K-class documents: class "none" holds only distractors; class k >= 1 holds the evidence of kind
    EVIDENCE_KINDS[(k - 1) % 3] (for K = 4: none, order_1, witness_2, pair_3), equally often."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    rng = np.random.default_rng(seed)
    docs = _Documents(rng, dim, 2 * (n_classes - 1) + 8, noise=1.0)
    evidence = [None] + _evidence(docs, n_classes - 1)
    names = ["none"] + [f"{e.kind}_{k}" for k, e in enumerate(evidence) if e is not None]
    labels = rng.integers(n_classes, size=n_bags)
    bags, marks_of = [], []
    for label in labels:
        centers, marks = _background(docs, n_windows, 2 * (n_classes - 1)), np.zeros(n_windows, dtype=np.int64)
        free = list(range(n_windows))
        if label:
            evidence[label].place(rng, centers, free, marks)
        for other in rng.permutation([k for k in range(1, n_classes) if k != label])[:2]:
            if rng.random() < 0.5:
                evidence[other].distract(rng, centers, free)
        bags.append(docs.windows(centers))
        marks_of.append(marks)
    return validate(BagSet(bags, np.asarray(names)[labels], np.array([f"doc{i:05d}" for i in range(n_bags)]),
                           instance_labels=marks_of, source=f"multiclass(K={n_classes}, n_bags={n_bags}, seed={seed})"))


def make_multilabel_task(n_labels: int = 5, *, n_bags: int = 1500, n_windows: int = 16, dim: int = 256,
                         rate: float = 0.35, seed: int = 0) -> BagSet:
    """Documents tagged with any subset of ``n_labels`` labels (each present with probability ``rate``),
    label k carrying evidence of kind EVIDENCE_KINDS[k % 3]; an absent pair or order label leaves a
    distractor half the time."""
    rng = np.random.default_rng(seed)
    docs = _Documents(rng, dim, 2 * n_labels + 8, noise=1.0)
    evidence = _evidence(docs, n_labels)
    names = [f"{e.kind}_{k}" for k, e in enumerate(evidence)]
    labels = (rng.random((n_bags, n_labels)) < rate).astype(np.int64)
    bags, marks_of = [], []
    for row in labels:
        centers, marks = _background(docs, n_windows, 2 * n_labels), np.zeros(n_windows, dtype=np.int64)
        free = list(range(n_windows))
        for k, present in enumerate(row):
            if present:
                evidence[k].place(rng, centers, free, marks)
            elif rng.random() < 0.5:
                evidence[k].distract(rng, centers, free)
        bags.append(docs.windows(centers))
        marks_of.append(marks)
    bs = BagSet(bags, labels, np.array([f"doc{i:05d}" for i in range(n_bags)]), instance_labels=marks_of,
                source=f"multilabel(K={n_labels}, n_bags={n_bags}, seed={seed})", meta={"label_names": names})
    return validate(bs)


def _background(docs: _Documents, n: int, n_special: int) -> np.ndarray:
    """(n, D) centers from three of the prototypes after the first ``n_special``."""
    topics = n_special + docs.rng.choice(len(docs.prototypes) - n_special, size=3, replace=False)
    return docs.prototypes[docs.rng.choice(topics, size=n)].copy()
