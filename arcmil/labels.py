"""The label space of a run: binary, multi-class or multi-label, with the class names.

One object owns everything that depends on it, and every layer asks it:

===========  ==========================  =========  =================================  ============================
kind         labels (after reading)      outputs    loss                               decision
===========  ==========================  =========  =================================  ============================
binary       (B,) in {0, 1}              1 logit    BCE, pos_weight n_neg / n_pos      probability >= threshold
multiclass   (B,) class ids 0..K-1       K logits   cross-entropy, class weights       argmax of the probabilities
                                                    n / (K n_k)
multilabel   (B, K) in {0, 1}            K logits   per-label BCE, per-label           per label: probability >=
                                                    pos_weight n_neg / n_pos           that label's threshold
===========  ==========================  =========  =================================  ============================

How labels as read become one of the three (``infer``): numbers all 0 or 1 (or all -1 or 1, -1 the
negative class; or true/false) stay binary (as before), numbers written as text included; other integers or any other
strings ('07' and '7': two names) are classes (multi-class, named by the sorted distinct values); strings
holding ``|`` are label sets (multi-label, ``"a|b"``, the empty string for none); a (B, K) 0/1 matrix is
multi-label. Binary keeps its single logit, so every binary number is what it was.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arcmil.errors import ArcmilError, DataError

KINDS = ("binary", "multiclass", "multilabel")
LABEL_SEPARATOR = "|"  # between the label names of one multi-label bag in a table cell


@dataclass(frozen=True)
class LabelSpace:
    """``kind`` (KINDS) and ``classes``: the class names (multi-class, in id order) or label names
    (multi-label, in column order); binary is ("0", "1")."""

    kind: str = "binary"
    classes: tuple[str, ...] = ("0", "1")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ArcmilError(f"label space kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if len(set(self.classes)) != len(self.classes):
            raise ArcmilError(f"class names must be distinct, got {list(self.classes)}")
        if self.binary and self.classes != ("0", "1"):
            raise ArcmilError(f"a binary label space has the classes 0 and 1, got {list(self.classes)}")
        if not self.classes:  # one class is data to score; training asks for two (checks.check_inputs)
            raise ArcmilError(f"a {self.kind} label space needs at least one class")
        if self.kind == "multilabel" and any(LABEL_SEPARATOR in c or not c.strip() for c in self.classes):
            raise ArcmilError(f"label names must be non-empty and free of {LABEL_SEPARATOR!r}, got "
                              f"{list(self.classes)}")

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    @property
    def n_outputs(self) -> int:
        """Logits per bag: 1 (binary) or K."""
        return 1 if self.binary else len(self.classes)

    @property
    def model_settings(self) -> dict:
        """The model settings this space fixes: K outputs beyond binary (none for binary, whose configs and
        tags stay as they were)."""
        return {} if self.binary else {"n_outputs": self.n_outputs}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict | None) -> "LabelSpace":
        """None (a run or checkpoint from before label spaces) is binary; anything else malformed is an
        ArcmilError."""
        if data is None:
            return cls()
        try:
            return cls(data["kind"], tuple(map(str, data["classes"])))
        except (KeyError, TypeError) as exc:
            raise ArcmilError(f"label_space {data!r} is not a label space ({type(exc).__name__}: {exc})") from None

    # ---- data -------------------------------------------------------------------------------------

    def class_counts(self, labels: np.ndarray) -> np.ndarray:
        """(K,) bags of each class (binary: negatives, positives; multi-label: bags carrying each label)."""
        labels = np.asarray(labels)
        if self.kind == "multilabel":
            return labels.sum(axis=0).astype(np.int64)
        return np.bincount(labels.astype(np.int64), minlength=len(self.classes))

    def check_part(self, name: str, labels: np.ndarray, src: str) -> None:
        """A split part fit to train on (``name`` 'train': every class, every label both present and
        absent) or to evaluate on (binary: both classes; otherwise two classes, or one label with both
        values)."""
        counts, n = self.class_counts(labels), len(labels)
        if self.binary:
            if (counts == 0).any():
                only = int(np.argmax(counts))
                raise DataError(src, f"split '{name}' holds only class {only}; it needs both classes", field="split")
            return
        if self.n_outputs < 2:
            raise DataError(src, f"a {self.kind} label space needs two or more classes, found {list(self.classes)}",
                            field="labels")
        if name == "train":
            if self.kind == "multiclass" and (counts == 0).any():
                raise DataError(src, f"split 'train' has no bags of class {self.classes[int(np.argmin(counts))]!r}; "
                                "every class needs training bags", field="split")
            one_sided = (counts == 0) | (counts == n)
            if self.kind == "multilabel" and one_sided.any():
                k = int(np.argmax(one_sided))
                what = "no bag" if counts[k] == 0 else "every bag"
                raise DataError(src, f"in split 'train' {what} has label {self.classes[k]!r}; every label needs "
                                "training bags with and without it", field="split")
            return
        if name == "val":  # calibration and per-label thresholds are fitted on every class here
            one_sided = (counts == 0) if self.kind == "multiclass" else (counts == 0) | (counts == n)
            if one_sided.any():
                k = int(np.argmax(one_sided))
                raise DataError(src, f"split 'val' has {'no' if counts[k] == 0 else 'only'} bags of "
                                f"{self.kind.removeprefix('multi')} {self.classes[k]!r}; calibration and thresholds "
                                "are fitted per class on validation, so it needs bags with and without each",
                                field="split")
            return
        evaluable = (counts > 0).sum() >= 2 if self.kind == "multiclass" else ((counts > 0) & (counts < n)).any()
        if not evaluable:
            counted = dict(zip(self.classes, counts.tolist()))
            raise DataError(src, f"split '{name}' has too few classes to evaluate on ({counted})", field="split")

    def recode(self, labels: np.ndarray, source: "LabelSpace", src: str, bag_ids) -> np.ndarray:
        """``labels`` read as ``source`` expressed in this space (data scored by a trained model):
        class names matched by name; a class or label the model does not know is a DataError."""
        if source == self:
            return labels
        compatible = (self.kind == source.kind or (self.kind == "multiclass" and source.binary)
                      or (self.kind == "binary" and source.kind == "multiclass")
                      or (self.kind == "multilabel" and source.kind == "multiclass"))  # one label per bag
        if not compatible:
            raise DataError(src, f"the data has {source.kind} labels, the model was trained on {self.kind} "
                            f"labels ({', '.join(self.classes)})", field="labels")
        position = {name: i for i, name in enumerate(self.classes)}
        unknown = [name for name in source.classes if name not in position]
        if self.kind == "multilabel":
            if unknown:
                raise DataError(src, f"label {unknown[0]!r} is not one the model knows ({', '.join(self.classes)})",
                                field="labels")
            out = np.zeros((len(labels), len(self.classes)), dtype=np.int64)
            columns = [position[name] for name in source.classes]
            if source.kind == "multiclass":
                out[np.arange(len(labels)), np.asarray(columns)[labels]] = 1
            else:
                out[:, columns] = labels
            return out
        mapping = np.array([position.get(name, -1) for name in source.classes])
        out = mapping[np.asarray(labels, dtype=np.int64)]
        if (out < 0).any():
            i = int(np.argmax(out < 0))
            raise DataError(src, f"class {source.classes[labels[i]]!r} is not one the model knows "
                            f"({', '.join(self.classes)})", bag=str(bag_ids[i]), field="labels")
        return out

    def names(self, labels: np.ndarray) -> np.ndarray:
        """(B,) labels as a table cell shows them and ``infer`` reads them back: 0/1 (binary), the class
        name (multi-class; an integer when every name is one) or the label names joined by ``|``."""
        if self.binary:
            return np.asarray(labels)
        if self.kind == "multiclass":
            names = np.asarray(self.classes)[np.asarray(labels)]
            return names.astype(np.int64) if _all_integers(self.classes) else names
        return np.array([LABEL_SEPARATOR.join(np.asarray(self.classes)[row == 1]) for row in np.asarray(labels)])

    def arrays(self, labels: np.ndarray) -> dict:
        """The labels as .npz / .pt arrays: ``labels`` (names, see ``names``; multi-label a (B, K) 0/1 matrix)
        and, for multi-label, ``label_names``."""
        if self.kind == "multilabel":
            return {"labels": np.asarray(labels), "label_names": np.asarray(self.classes)}
        return {"labels": self.names(labels)}

    def table_columns(self, labels: np.ndarray) -> dict:
        """The labels as table columns (a bag file's, predictions.csv's): ``label`` (names, see ``names``),
        or one 0/1 ``label_<name>`` per label."""
        if self.kind == "multilabel":
            return {f"label_{name}": np.asarray(labels)[:, k] for k, name in enumerate(self.classes)}
        return {"label": self.names(labels)}

    # ---- training ---------------------------------------------------------------------------------

    def criterion(self, train_labels: np.ndarray):
        """The loss, weighted by the training split's class balance (see the module docstring)."""
        import torch
        from torch import nn

        from arcmil.losses import ClassWeightedCrossEntropy

        counts = self.class_counts(train_labels).astype(np.float64)
        n = len(train_labels)
        if self.binary:
            return nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float((n - counts[1]) / counts[1])))
        if self.kind == "multilabel":
            return nn.BCEWithLogitsLoss(pos_weight=torch.tensor((n - counts) / counts, dtype=torch.float32))
        return ClassWeightedCrossEntropy(torch.tensor(n / (len(counts) * counts), dtype=torch.float32))

    def probabilities(self, logits):
        """Uncalibrated probabilities of logits (torch, (B,) or (B, K)): softmax for multi-class, else sigmoid."""
        import torch

        return torch.softmax(logits, dim=-1) if self.kind == "multiclass" else torch.sigmoid(logits)

    # ---- decisions ---------------------------------------------------------------------------------

    def tune_threshold(self, labels, probs, method: str = "f1", fixed: float = 0.5):
        """The decision parameters chosen on validation: binary one threshold, multi-label one per label
        (each by ``arcmil.metrics.tune_threshold``), multi-class none (argmax)."""
        from arcmil.metrics import tune_threshold

        if self.binary:
            return tune_threshold(labels, probs, method, fixed)
        if self.kind == "multiclass":
            return None
        return [float(tune_threshold(labels[:, k], probs[:, k], method, fixed)) for k in range(len(self.classes))]

    def decide(self, probs: np.ndarray, threshold) -> np.ndarray:
        """(B,) 0/1 (binary), (B,) class ids (multi-class) or (B, K) 0/1 (multi-label)."""
        if self.kind == "multiclass":
            return np.asarray(probs).argmax(axis=1)
        return (np.asarray(probs) >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)

    @property
    def thresholded(self) -> bool:
        """Whether decisions are made at thresholds (binary, multi-label), not by argmax (multi-class)."""
        return self.kind != "multiclass"

    def threshold_columns(self, threshold) -> dict:
        """A table's threshold cells: ``threshold`` (binary), ``threshold_<label>`` per label (multi-label),
        none for the argmax of classes."""
        if not self.thresholded:
            return {}
        if self.binary:
            return {"threshold": threshold}
        return {f"threshold_{name}": t for name, t in zip(self.classes, threshold)}

    def check_threshold(self, threshold, where: str) -> None:
        """Refuse stored decision parameters that do not fit this space."""
        if self.kind == "multiclass":
            ok = threshold is None
        elif self.binary:
            ok = isinstance(threshold, float) and 0.0 <= threshold <= 1.0
        else:
            ok = (isinstance(threshold, list) and len(threshold) == len(self.classes)
                  and all(isinstance(t, float) and 0.0 <= t <= 1.0 for t in threshold))
        if not ok:
            want = {"binary": "a probability", "multiclass": "none (argmax)",
                    "multilabel": f"{len(self.classes)} probabilities"}[self.kind]
            raise ArcmilError(f"{where}: threshold {threshold!r} is not {want}")

    # ---- metrics -----------------------------------------------------------------------------------

    def metrics(self, labels, probs, threshold) -> dict:
        """Test or validation metrics (scikit-learn). Every kind reports ``roc_auc``, ``pr_auc``, ``f1``
        and ``accuracy`` (macro averages beyond binary), so comparisons, searches and monitors read the
        same keys."""
        from arcmil.metrics import binary_metrics, multiclass_metrics, multilabel_metrics

        if self.binary:
            return binary_metrics(labels, probs, threshold)
        if self.kind == "multiclass":
            return multiclass_metrics(labels, probs, self.classes)
        return multilabel_metrics(labels, probs, threshold, self.classes)

    def one_vs_rest(self, labels, probs, threshold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each class (or label) as a binary problem: truth, score and decision, each (B, K') with K' 1
        for binary; the macro figures are means over these columns."""
        decision = self.decide(probs, threshold)
        labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
        if self.binary:
            return labels[:, None], probs[:, None], decision[:, None]
        if self.kind == "multiclass":
            eye = np.eye(len(self.classes), dtype=np.int64)
            return eye[labels], probs, eye[decision]
        return labels, probs, decision

    def pooled_one_vs_rest(self, labels, probs) -> tuple[np.ndarray, np.ndarray]:
        """Every (bag, class) pair as one binary problem, truth and score (B K',): the micro-averaged
        curve beyond binary (binary: the labels and probabilities themselves)."""
        labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
        if self.kind == "multiclass":
            labels = np.eye(len(self.classes), dtype=np.int64)[labels]
        return labels.ravel(), probs.ravel()

    def table_scores(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probs) back from predictions.csv rows (``table_columns`` and ``prediction_columns``;
        multi-class labels read as text)."""
        if self.binary:
            return frame["label"].to_numpy(np.int64), frame["prob"].to_numpy(np.float64)
        probs = frame[[f"prob_{name}" for name in self.classes]].to_numpy(np.float64)
        if self.kind == "multiclass":
            position = {name: k for k, name in enumerate(self.classes)}
            return np.array([position[name] for name in frame["label"].astype(str)], dtype=np.int64), probs
        return frame[[f"label_{name}" for name in self.classes]].to_numpy(np.int64), probs

    def split_summary(self, labels) -> dict:
        """A split's size in results.json: bags and positives (binary) or bags per class/label."""
        counts = self.class_counts(labels)
        if self.binary:
            return {"n_bags": len(labels), "n_positive": int(counts[1])}
        return {"n_bags": len(labels), "class_counts": dict(zip(self.classes, counts.tolist()))}

    # ---- outputs -----------------------------------------------------------------------------------

    def prediction_columns(self, probs: np.ndarray, threshold) -> dict:
        """predictions.csv's columns: binary prob, pred; multi-class prob_<class> each, pred (the class
        name); multi-label prob_<label> and pred_<label> each."""
        decision = self.decide(probs, threshold)
        if self.binary:
            return {"prob": probs, "pred": decision}
        columns = {f"prob_{name}": probs[:, k] for k, name in enumerate(self.classes)}
        if self.kind == "multiclass":
            return {**columns, "pred": self.names(decision)}
        return {**columns, **{f"pred_{name}": decision[:, k] for k, name in enumerate(self.classes)}}

    def caption(self, label, probs) -> str:
        """One bag's truth and score for a figure's row: ``y=1 p=0.93``; beyond binary the true class (or
        label set) and the most probable class or label with its probability. ``label`` None: unknown."""
        if self.binary:
            return f"y={'?' if label is None else label} p={probs:.2f}"
        top = int(np.argmax(probs))
        truth = "?" if label is None else self.names(np.asarray([label]))[0]
        return f"y={truth or '-'} top={self.classes[top]} p={probs[top]:.2f}"

    def display_sample(self, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` bag positions to show in a figure, seeded: binary half positives, then negatives;
        beyond binary round-robin over the classes (multi-label: the bags' rarest labels)."""
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels)
        if self.binary:
            pos, neg = rng.permutation(np.flatnonzero(labels == 1)), rng.permutation(np.flatnonzero(labels == 0))
            take = n // 2
            return np.concatenate([pos[:take], neg[: n - min(take, len(pos))]]).astype(np.int64)
        if self.kind == "multilabel":  # each bag in the group of its rarest label (-1: none)
            rarity = np.where(labels == 1, self.class_counts(labels)[None, :], np.iinfo(np.int64).max)
            strata = np.where(labels.any(axis=1), rarity.argmin(axis=1), -1)
        else:
            strata = labels
        groups = [rng.permutation(np.flatnonzero(strata == s)) for s in np.unique(strata)]
        order = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        return np.asarray(order[:n], dtype=np.int64)

    def reliability_pairs(self, labels, probs) -> tuple[np.ndarray, np.ndarray]:
        """(outcome, probability) pairs a reliability diagram and the ECE bin: the labels themselves
        (binary), whether the top class is right and its probability (multi-class), every (bag, label)
        pair (multi-label)."""
        labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
        if self.kind == "multiclass":
            return (probs.argmax(axis=1) == labels).astype(np.int64), probs.max(axis=1)
        return labels.ravel(), probs.ravel()

    @property
    def row_metrics(self) -> tuple[str, ...]:
        """The metrics of a results CSV row and a comparison table."""
        if self.binary:
            return ("roc_auc", "pr_auc", "f1", "precision", "recall", "specificity", "accuracy", "balanced_accuracy",
                    "mcc")
        if self.kind == "multiclass":
            return ("roc_auc", "pr_auc", "f1", "f1_weighted", "accuracy", "balanced_accuracy", "log_loss")
        return ("roc_auc", "roc_auc_micro", "pr_auc", "f1", "f1_micro", "accuracy", "hamming_loss")


BINARY = LabelSpace()


def merge(parts) -> LabelSpace:
    """One space for data read in pieces (a store's chunks): ``parts`` are (space, labels) of each piece;
    the union of their classes, ordered as ``infer`` orders them (labels: as first seen). A binary piece
    beside multi-class ones adds the classes it holds ("0", "1", or both)."""
    parts = list(parts)
    kinds = {space.kind for space, _ in parts}
    if kinds == {"binary"}:
        return BINARY
    if "multilabel" in kinds:  # a piece whose bags have one label each reads as classes
        if "binary" in kinds:
            raise ArcmilError("some bags have label sets and others 0/1 labels")
        return LabelSpace("multilabel", tuple(dict.fromkeys(c for space, _ in parts for c in space.classes)))
    present = {str(v) for space, labels in parts if space.binary for v in np.unique(labels)}
    return LabelSpace("multiclass", _ordered(present | {c for space, _ in parts if not space.binary
                                                        for c in space.classes}))


def _all_integers(names) -> bool:
    """Whether every name is an integer written plainly ("7", "-2"; not "007", "1.0" or "+3")."""
    def plain(name: str) -> bool:
        try:
            return str(int(name)) == name
        except ValueError:
            return False

    return all(plain(name) for name in names)


def _plain_numbers(text: np.ndarray) -> bool:
    """Whether every cell is a number and none is zero-padded: '07' and '7' are two class names, '1.0' and
    '0' are numbers."""
    try:
        text.astype(np.float64)
    except ValueError:
        return False
    return not any(t.lstrip("+-").startswith("0") and t.lstrip("+-")[1:2].isdigit() for t in text)


def _ordered(names) -> tuple[str, ...]:
    """Class names in ``infer``'s order: numeric when every name is an integer, else lexicographic."""
    return tuple(sorted(names, key=int) if _all_integers(names) else sorted(names))


def infer(raw, src: str, bag_ids, names=None, label_sets: bool = False) -> tuple[LabelSpace, np.ndarray]:
    """Labels as read (numbers, strings, label sets or a (B, K) 0/1 matrix) -> their space and the
    encoded labels (see the module docstring). ``names``: the label names of a matrix's columns;
    ``label_sets``: read strings as label sets even where no cell holds two."""
    raw = np.asarray(raw)
    if raw.ndim == 2 and raw.shape[1] == 1:  # one label column is a binary label
        raw = raw[:, 0]
    if raw.dtype.kind == "O" and raw.ndim == 1:  # names from a table: a missing cell (None, NaN) is ""
        raw = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in raw])
    if raw.ndim == 2:
        return _multilabel_matrix(raw, src, bag_ids, names)
    if raw.ndim != 1:
        raise DataError(src, f"labels must be (B,) or (B, K), found shape {raw.shape}", field="labels")
    if raw.dtype.kind in "US" and not label_sets:  # numbers or booleans written as text (a CSV cell)
        text = np.char.lower(np.char.strip(raw.astype(str)))
        if np.isin(text, ("true", "false")).all():
            raw = text == "true"
        elif _plain_numbers(text):
            raw = text.astype(np.float64)
    if raw.dtype.kind in "biuf":
        bad = ~np.isfinite(raw.astype(np.float64)) | (raw != np.round(raw))
        if bad.any():
            i = int(np.argmax(bad))
            what = "missing label" if np.isnan(raw[i]) else f"label {raw[i].item()!r} is not 0/1 or a class id"
            raise DataError(src, what, bag=str(bag_ids[i]), field="labels")
        raw = raw.astype(np.int64)
        if np.isin(raw, (0, 1)).all():
            return LabelSpace(), raw
        if np.isin(raw, (-1, 1)).all():  # the other binary convention: -1 is the negative class
            return LabelSpace(), (raw == 1).astype(np.int64)
        values, ids = np.unique(raw, return_inverse=True)
        return _multiclass([str(v) for v in values], ids)
    if raw.dtype.kind not in "US":
        raise DataError(src, f"labels must be numbers or strings, found dtype {raw.dtype}", field="labels")
    text = np.char.strip(raw.astype(str))
    if label_sets or any(LABEL_SEPARATOR in t for t in text):
        return _label_sets(text)
    empty = text == ""
    if empty.any():
        raise DataError(src, "empty label", bag=str(bag_ids[int(np.argmax(empty))]), field="labels")
    classes = _ordered(set(text.tolist()))
    position = {name: i for i, name in enumerate(classes)}
    return _multiclass(list(classes), np.array([position[t] for t in text]))


def _multiclass(classes: list[str], ids: np.ndarray) -> tuple[LabelSpace, np.ndarray]:
    return LabelSpace("multiclass", tuple(classes)), ids.astype(np.int64)


def _label_sets(text: np.ndarray) -> tuple[LabelSpace, np.ndarray]:
    """'a|b' cells -> (B, K) 0/1 over the sorted union of the names."""
    sets = [[part.strip() for part in t.split(LABEL_SEPARATOR) if part.strip()] if t else [] for t in text]
    names = sorted({name for s in sets for name in s})
    position = {name: k for k, name in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), dtype=np.int64)
    for row, s in enumerate(sets):
        matrix[row, [position[name] for name in s]] = 1
    return LabelSpace("multilabel", tuple(names)), matrix


def _multilabel_matrix(raw: np.ndarray, src: str, bag_ids, names) -> tuple[LabelSpace, np.ndarray]:
    if raw.dtype.kind not in "biuf":
        raise DataError(src, f"a label matrix must hold 0/1 numbers, found dtype {raw.dtype}", field="labels")
    bad = ~np.isin(raw, (0, 1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(src, f"label matrix value {raw[row, col].item()!r} in column {col} is not 0 or 1",
                        bag=str(bag_ids[row]), field="labels")
    names = [str(k) for k in range(raw.shape[1])] if names is None else [str(n) for n in np.asarray(names).ravel()]
    if len(names) != raw.shape[1]:
        raise DataError(src, f"{len(names)} label names for a label matrix of {raw.shape[1]} columns",
                        field="label_names")
    try:
        return LabelSpace("multilabel", tuple(names)), raw.astype(np.int64)
    except ArcmilError as exc:
        raise DataError(src, str(exc), field="label_names") from None
