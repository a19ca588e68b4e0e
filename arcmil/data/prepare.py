"""Turn loaded bags into a training-ready split: train/val/test assignment and normalisation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from arcmil.config import NORMALIZATIONS
from arcmil.data.bagset import SPLITS, BagSet
from arcmil.data.packed import PackedBags, bag_chunks
from arcmil.errors import DataError


def assign_split(bs: BagSet, seed: int, fractions=(0.70, 0.15, 0.15)) -> BagSet:
    """Keep a stored split; otherwise draw a train/val/test split with ``seed``, stratified by class
    (multi-label: by iterative stratification, see ``stratified_split``)."""
    if bs.split is not None:
        return bs
    index, labels = np.arange(len(bs)), np.asarray(bs.labels)
    try:
        train, rest = stratified_split(index, labels, seed, train_size=fractions[0])
        val, test = stratified_split(rest, labels, seed, train_size=fractions[1] / (fractions[1] + fractions[2]))
    except ValueError as exc:  # too few bags of a class to stratify
        raise DataError(bs.source, f"cannot draw a stratified 70/15/15 split ({exc})", field="labels") from None
    split = np.empty(len(bs), dtype="<U5")
    split[train], split[val], split[test] = "train", "val", "test"
    bs = bs.subset(index)
    bs.split = split
    return bs


def stratified_split(index: np.ndarray, labels: np.ndarray, seed: int, **size):
    """Bag positions ``index`` cut into (first, second), ``size`` the ``train_size`` (first) or ``test_size``
    (second) share as scikit-learn's train_test_split takes it, each class in proportion: by class (labels
    (B,)), or for a label matrix (B, K) by iterative stratification (Sechidis et al. 2011; the
    iterative-stratification package), which keeps every label's share."""
    from sklearn.model_selection import train_test_split  # not on the scoring path (arcmil.scoring)

    if labels.ndim == 1:
        return train_test_split(index, stratify=labels[index], random_state=seed, **size)
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    test_size = size["test_size"] if "test_size" in size else 1.0 - size["train_size"]
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    first, second = next(splitter.split(index, labels[index]))
    return index[first], index[second]


def cv_splits(labels: np.ndarray, folds: int, seeds: list[int], val_fraction: float = 0.2):
    """Yield (repeat, fold, seed, split) with split a (B,) array of train/val/test, one per fold;
    ``labels``: classes (B,) or a label matrix (B, K).

    The folds of repeat r come from StratifiedKFold(shuffle=True, random_state=seeds[r]) (label matrices:
    MultilabelStratifiedKFold, iterative stratification); the validation part is a stratified
    ``val_fraction`` of that fold's training bags (``stratified_split``)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    for repeat, seed in enumerate(seeds):
        if labels.ndim == 1:
            kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        else:
            from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

            kfold = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fold, (train_full, test) in enumerate(kfold.split(np.zeros(len(labels)), labels)):
            train, val = stratified_split(train_full, labels, seed, test_size=val_fraction)
            split = np.empty(len(labels), dtype="<U5")
            split[train], split[val], split[test] = "train", "val", "test"
            yield repeat, fold, seed, split


def split_parts(bs: BagSet, names: tuple[str, ...] = SPLITS) -> dict[str, BagSet]:
    """{'train': …, 'val': …, 'test': …} (or the parts ``names``), each with the classes it needs
    (LabelSpace.check_part)."""
    parts = {}
    for name in names:
        part = bs.subset(np.flatnonzero(bs.split == name))
        if len(part) == 0:
            raise DataError(bs.source, f"split '{name}' has no bags", field="split")
        bs.label_space.check_part(name, part.labels, bs.source)
        parts[name] = part
    return parts


def window_chunks(bags: PackedBags, max_windows: int = 2**18):
    """The windows of ``bags`` as float64 arrays of about ``max_windows`` rows, whole bags each, so
    that statistics over a store never hold it in memory."""
    for index in bag_chunks(bags.lengths, max_windows):
        yield bags.gather(index).astype(np.float64)


@dataclass(frozen=True)
class Normalizer:
    """Per-window input normalisation, fitted on the training split and stored in checkpoints.

    kind: 'l2' (unit length, as ArcFace embeddings are), 'standardize' (train mean/std per
    feature) or 'none'. Applied to each batch's windows as the loader builds it (``apply``).
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
        bags = PackedBags.from_list(train.bags)
        count = bags.lengths.sum()
        mean = sum(chunk.sum(axis=0) for chunk in window_chunks(bags)) / count
        std = np.sqrt(sum(((chunk - mean) ** 2).sum(axis=0) for chunk in window_chunks(bags)) / count)
        std[std < 1e-12] = 1.0  # constant features stay constant instead of dividing by zero
        return cls(kind, tuple(mean.tolist()), tuple(std.tolist()))

    def check_dim(self, bs: BagSet) -> None:
        if self.kind == "standardize" and len(self.mean) != bs.dim:
            raise DataError(bs.source, f"data has dimension {bs.dim}, the normaliser was fitted on "
                            f"{len(self.mean)}", field="embeddings")

    def apply(self, windows: torch.Tensor) -> torch.Tensor:
        """windows: (..., D) float32 -> (..., D) float32 normalised, each window on its own."""
        if self.kind == "l2":
            return windows / torch.linalg.vector_norm(windows, dim=-1, keepdim=True).clamp(min=1e-12)
        if self.kind == "standardize":
            mean = torch.tensor(self.mean, dtype=windows.dtype, device=windows.device)
            std = torch.tensor(self.std, dtype=windows.dtype, device=windows.device)
            return (windows - mean) / std
        return windows

    def __call__(self, bs: BagSet) -> BagSet:
        """A copy of ``bs`` with every window normalised (in memory)."""
        self.check_dim(bs)
        return bs.with_bags([self.apply(torch.from_numpy(np.asarray(b, np.float32))).numpy() for b in bs.bags])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean and list(self.mean), "std": self.std and list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(d["kind"], d["mean"] and tuple(d["mean"]), d["std"] and tuple(d["std"]))
