"""Built-in demo data: seeded ArcFace-like documents whose labels need more than attention pooling.

Each document is 10 ordered windows, each a 256-d unit vector near one of a few topic prototypes.
Positive documents come in two kinds, half each:
  * witness: one or two windows also carry a "positive" direction W (sparse positives, the case
    attention pooling was made for);
  * ordered motif: a window of motif A followed later by a window of motif B.
Negative documents include A alone, B alone, and B *before* A, so the motif kind is decided by
order and co-occurrence, which a permutation-invariant attention pool cannot see but a Transformer
with positions can. Per-window ground truth (``instance_labels``) marks W, A and B windows of
positive documents.
"""
from __future__ import annotations

import numpy as np

from arcmil.data.bagset import BagSet, validate


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_demo_bags(n_bags: int = 1500, *, n_windows: int = 10, dim: int = 256, positive_rate: float = 0.35,
                   noise: float = 1.2, witness_strength: float = 0.7, seed: int = 0) -> BagSet:
    """Generate the demo BagSet (no split: the pipeline draws a stratified one with the run's seed)."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((6, dim)))
    witness, motif_a, motif_b = _unit(rng.standard_normal((3, dim)))

    def window(center: np.ndarray) -> np.ndarray:
        return _unit(center + noise * rng.standard_normal(dim) / np.sqrt(dim))

    bags, labels, inst = [], [], []
    for _ in range(n_bags):
        label = int(rng.random() < positive_rate)
        topic_of = rng.choice(len(topics), size=2, replace=False)
        centers = [topics[topic_of[int(k)]] for k in rng.random(n_windows) < 0.5]
        marks = np.zeros(n_windows, dtype=np.int64)
        kind = rng.random()
        if label and kind < 0.5:  # witness: one or two windows carry W
            for pos in rng.choice(n_windows, size=rng.integers(1, 3), replace=False):
                centers[pos] = _unit(centers[pos] + witness_strength * witness)
                marks[pos] = 1
        else:
            i, j = sorted(rng.choice(n_windows, size=2, replace=False))
            if label:  # A before B
                centers[i], centers[j] = motif_a, motif_b
                marks[[i, j]] = 1
            elif kind < 0.25:  # B before A: same windows, wrong order
                centers[i], centers[j] = motif_b, motif_a
            elif kind < 0.5:  # one motif alone
                centers[i] = motif_a if rng.random() < 0.5 else motif_b
            # else: plain negative document
        bags.append(np.stack([window(c) for c in centers]).astype(np.float32))
        labels.append(label)
        inst.append(marks)
    bs = BagSet(bags=bags, labels=np.asarray(labels), bag_ids=np.array([f"doc{i:05d}" for i in range(n_bags)]),
                instance_labels=inst, source=f"demo(n_bags={n_bags}, seed={seed})")
    return validate(bs)
