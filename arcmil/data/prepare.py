"""Turn loaded bags into a training-ready split: train/val/test assignment and normalisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from arcmil.data.bagset import SPLITS, BagSet
from arcmil.errors import DataError

NORMALIZATIONS = ("l2", "standardize", "none")


def assign_split(bs: BagSet, seed: int, fractions=(0.70, 0.15, 0.15)) -> BagSet:
    """Keep a stored split; otherwise draw a stratified train/val/test split with ``seed``."""
    if bs.split is not None:
        return bs
    index = np.arange(len(bs))
    try:
        train, rest = train_test_split(index, train_size=fractions[0], stratify=bs.labels, random_state=seed)
        val_share = fractions[1] / (fractions[1] + fractions[2])
        val, test = train_test_split(rest, train_size=val_share, stratify=bs.labels[rest], random_state=seed)
    except ValueError as exc:  # too few bags of a class to stratify
        raise DataError(bs.source, f"cannot draw a stratified 70/15/15 split ({exc})", field="labels") from None
    split = np.empty(len(bs), dtype="<U5")
    split[train], split[val], split[test] = "train", "val", "test"
    bs = bs.subset(index)
    bs.split = split
    return bs


def split_parts(bs: BagSet) -> dict[str, BagSet]:
    """{'train': …, 'val': …, 'test': …}; each must hold bags of both classes."""
    parts = {}
    for name in SPLITS:
        part = bs.subset(np.flatnonzero(bs.split == name))
        if len(part) == 0:
            raise DataError(bs.source, f"split '{name}' has no bags", field="split")
        if len(np.unique(part.labels)) < 2:
            only = int(part.labels[0])
            raise DataError(bs.source, f"split '{name}' holds only class {only}; it needs both classes",
                            field="split")
        parts[name] = part
    return parts


@dataclass(frozen=True)
class Normalizer:
    """Per-window input normalisation, fitted on the training split and stored in checkpoints.

    kind: 'l2' (unit length, as ArcFace embeddings are), 'standardize' (train mean/std per
    feature) or 'none'.
    """

    kind: str = "l2"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def fit(cls, kind: str, train: BagSet) -> "Normalizer":
        if kind not in NORMALIZATIONS:
            raise DataError(train.source, f"unknown normalisation {kind!r} (use {', '.join(NORMALIZATIONS)})")
        if kind != "standardize":
            return cls(kind)
        windows = np.concatenate(train.bags).astype(np.float64)
        std = windows.std(axis=0)
        std[std < 1e-12] = 1.0  # constant features stay constant instead of dividing by zero
        return cls(kind, tuple(windows.mean(axis=0).tolist()), tuple(std.tolist()))

    def __call__(self, bs: BagSet) -> BagSet:
        if self.kind == "l2":
            bags = [b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12) for b in bs.bags]
        elif self.kind == "standardize":
            if len(self.mean) != bs.dim:
                raise DataError(bs.source, f"data has dimension {bs.dim}, the normaliser was fitted on "
                                f"{len(self.mean)}", field="embeddings")
            mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
            bags = [(b - mean) / std for b in bs.bags]
        else:
            bags = bs.bags
        return bs.with_bags([b.astype(np.float32) for b in bags])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean and list(self.mean), "std": self.std and list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(d["kind"], d["mean"] and tuple(d["mean"]), d["std"] and tuple(d["std"]))
