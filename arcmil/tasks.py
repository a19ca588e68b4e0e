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
"""
from __future__ import annotations

import numpy as np

from arcmil.data.bagset import BagSet, validate
from arcmil.demo import make_demo_bags

TASKS = ("sparse_presence", "noisy_presence", "cooccurrence", "order", "imbalanced", "variable_length", "demo")
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
    """A validated BagSet of ``task`` (one of TASKS), no split (the pipeline draws one), seeded."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
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
