"""The validated in-memory form of Stage-2 bags that every reader produces."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from arcmil.data.packed import PackedBags
from arcmil.errors import DataError
from arcmil.labels import BINARY, LabelSpace, infer

SPLITS = ("train", "val", "test")


@dataclass
class BagSet:
    """Documents as bags of ordered window embeddings.

    bags: one float32 array (n_i, D) per document, windows in document order; after ``validate`` a
        ``PackedBags`` (one window array, possibly memory-mapped from a store).
    labels: encoded as ``label_space`` says (arcmil.labels): (B,) int64 in {0, 1} (binary), (B,) class ids
        (multi-class) or (B, K) 0/1 (multi-label); None for unlabelled data (prediction only).
    bag_ids: (B,) str, unique.
    split: (B,) str in train/val/test, or None.
    instance_labels: one (n_i,) int64 array per bag (per-window ground truth), or None.
    label_space: binary, multi-class or multi-label with the class names; set by ``validate`` from the
        labels read (``meta['label_names']``: a label matrix's column names), or by a store from its record.
    """

    bags: PackedBags | list[np.ndarray]
    labels: np.ndarray | None
    bag_ids: np.ndarray
    split: np.ndarray | None = None
    instance_labels: list[np.ndarray] | None = None
    source: str = "<memory>"
    meta: dict = field(default_factory=dict)
    label_space: LabelSpace = BINARY

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def dim(self) -> int:
        return self.bags.dim if isinstance(self.bags, PackedBags) else int(self.bags[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        if isinstance(self.bags, PackedBags):
            return self.bags.lengths
        return np.array([len(b) for b in self.bags], dtype=np.int64)

    def subset(self, index) -> "BagSet":
        index = np.asarray(index, dtype=np.int64)
        pick = lambda seq: None if seq is None else [seq[i] for i in index]  # noqa: E731
        return replace(
            self,
            bags=self.bags.subset(index) if isinstance(self.bags, PackedBags) else pick(self.bags),
            labels=None if self.labels is None else self.labels[index],
            bag_ids=self.bag_ids[index],
            split=None if self.split is None else self.split[index],
            instance_labels=pick(self.instance_labels),
        )

    def in_space(self, space: LabelSpace) -> "BagSet":
        """A copy whose labels (if any) are expressed in ``space``, a model's (LabelSpace.recode). A label
        matrix (named columns) must name every label of a multi-label model: a missing column is not 'absent'."""
        named = self.meta.get("label_names")
        if self.labels is not None and space.kind == "multilabel" and named is not None:
            missing = [name for name in space.classes if name not in named]
            if missing:
                raise DataError(self.source, f"the labels name no column for {missing[0]!r}, a label of the model "
                                f"({', '.join(space.classes)}); give each label's column, 0 where absent",
                                field="labels")
        labels = None if self.labels is None else space.recode(self.labels, self.label_space, self.source,
                                                                 self.bag_ids)
        return replace(self, labels=labels, label_space=space)

    def with_bags(self, bags: list[np.ndarray]) -> "BagSet":
        return replace(self, bags=bags)

    def summary(self) -> dict:
        lengths = self.lengths
        out = {
            "source": self.source,
            "n_bags": len(self),
            "dim": self.dim,
            "windows_per_bag": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                "max": int(lengths.max())},
        }
        if self.labels is not None:  # n_positive, or class_counts and the label space
            out.update(self.label_space.split_summary(self.labels))
            if not self.label_space.binary:
                out["label_space"] = self.label_space.to_dict()
        return out


def validate(bs: BagSet, *, require_labels: bool = True) -> BagSet:
    """Check a freshly read BagSet and cast it to canonical dtypes; raise DataError naming file, bag
    and field."""
    src = bs.source
    if len(bs) == 0:
        raise DataError(src, "no bags found", field="embeddings")
    if len(bs.bag_ids) != len(bs):
        raise DataError(src, f"{len(bs.bag_ids)} bag ids for {len(bs)} bags", field="bag_ids")
    ids, counts = np.unique(bs.bag_ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(src, "duplicate bag id", bag=str(ids[counts > 1][0]), field="bag_ids")
    dim = bs.bags[0].shape[1] if bs.bags[0].ndim == 2 else None
    for bag_id, bag in zip(bs.bag_ids, bs.bags):
        if bag.ndim != 2 or bag.shape[0] == 0:
            raise DataError(src, f"empty bag or bad shape {tuple(bag.shape)}", bag=str(bag_id),
                            field="embeddings")
        if bag.shape[1] != dim:
            raise DataError(src, f"embedding dimension {bag.shape[1]} differs from {dim} of the first bag",
                            bag=str(bag_id), field="embeddings")
        if not np.isfinite(bag).all():
            window = int(np.argwhere(~np.isfinite(bag))[0, 0])
            raise DataError(src, f"non-finite value in window {window}", bag=str(bag_id), field="embeddings")
    if bs.labels is None:
        if require_labels:
            raise DataError(src, "missing required labels", field="labels")
    else:
        if len(bs.labels) != len(bs):
            raise DataError(src, f"{len(bs.labels)} labels for {len(bs)} bags", field="labels")
        bs.label_space, bs.labels = infer(bs.labels, src, bs.bag_ids, bs.meta.get("label_names"))
    if bs.split is not None:
        if len(bs.split) != len(bs):
            raise DataError(src, f"{len(bs.split)} split values for {len(bs)} bags", field="split")
        bad = ~np.isin(bs.split, SPLITS)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(src, f"unknown split {str(bs.split[i])!r} (expected one of {', '.join(SPLITS)})",
                            bag=str(bs.bag_ids[i]), field="split")
    if bs.instance_labels is not None:
        for bag_id, bag, inst in zip(bs.bag_ids, bs.bags, bs.instance_labels):
            if len(inst) != len(bag) or not np.isin(inst, (0, 1)).all():
                raise DataError(src, "instance labels must be 0/1, one per window", bag=str(bag_id),
                                field="instance_labels")
        bs.instance_labels = [np.asarray(i).astype(np.int64) for i in bs.instance_labels]
    bs.bags = PackedBags.from_list(bs.bags)
    return bs
