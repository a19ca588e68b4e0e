"""Threshold search and binary, multi-class and multi-label metrics, computed by scikit-learn
(bootstrap intervals: see bootstrap_ci)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    log_loss,
    matthews_corrcoef,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from arcmil.config import THRESHOLD_METHODS

BOOTSTRAP_ELEMENTS = 2**20  # resample x bag cells counted at once by bootstrap_ci (8 MB per int64 (k, n) array)


def tune_threshold(y_true, scores, method: str = "f1", fixed: float = 0.5) -> float:
    """Decision threshold (predict positive when score >= threshold) chosen on validation probabilities.

    'f1' maximises F1 and 'youden' maximises TPR - FPR, each searched exactly over the distinct
    scores (the lowest such cut wins ties); 'fixed' returns ``fixed``. A searched threshold sits halfway
    between the chosen score and the next lower one (0 below the lowest): it makes the same validation
    decisions, lies on no validation bag's own score (where float error between two scorers of the same
    model, e.g. PyTorch and ONNX, could flip that bag), and leaves a margin on both sides.
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if method == "fixed":
        return float(fixed)
    if method == "f1":
        precision, recall, thresholds = precision_recall_curve(y_true, scores)
        # the last (precision=1, recall=0) point has no threshold
        precision, recall = precision[:-1], recall[:-1]
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        return _below(float(thresholds[np.argmax(f1)]), scores)
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
        # thresholds descend; the first is +inf (predict nothing). Reverse so argmax keeps the lowest.
        j = (tpr - fpr)[1:][::-1]
        return _below(float(thresholds[1:][::-1][np.argmax(j)]), scores)
    raise ValueError(f"unknown threshold method {method!r}; use one of {', '.join(THRESHOLD_METHODS)}")


def _below(chosen: float, scores: np.ndarray) -> float:
    """Halfway between the chosen score and the next lower distinct score (or 0)."""
    lower = scores[scores < chosen]
    return (chosen + (lower.max() if len(lower) else 0.0)) / 2


def _safe_auc(fn, y_true, scores) -> float | None:
    return float(fn(y_true, scores)) if len(np.unique(y_true)) == 2 else None


def binary_metrics(y_true, scores, threshold: float) -> dict:
    """Ranking metrics from ``scores`` and decision metrics at ``threshold``."""
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
        "threshold": float(threshold),
        "roc_auc": _safe_auc(roc_auc_score, y_true, scores),
        "pr_auc": _safe_auc(average_precision_score, y_true, scores),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "specificity": float(recall_score(y_true, pred, pos_label=0, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "mcc": float(matthews_corrcoef(y_true, pred)),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def multiclass_metrics(y_true, probs, classes) -> dict:
    """Metrics of (B,) class ids against (B, K) class probabilities, decisions by argmax. ROC-AUC and
    PR-AUC are one-vs-rest macro averages over the classes present (None with fewer than two)."""
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    k = len(classes)
    pred = probs.argmax(axis=1)
    onehot = np.eye(k, dtype=int)[y_true]
    aucs = [_safe_auc(roc_auc_score, onehot[:, c], probs[:, c]) for c in range(k)]  # None: one side absent
    ranked = [c for c in range(k) if aucs[c] is not None]
    return {
        "n": int(len(y_true)),
        "class_counts": {name: int((y_true == c).sum()) for c, name in enumerate(classes)},
        "roc_auc": float(np.mean([aucs[c] for c in ranked])) if len(ranked) >= 2 else None,
        "pr_auc": float(np.mean([average_precision_score(onehot[:, c], probs[:, c]) for c in ranked]))
        if len(ranked) >= 2 else None,
        "f1": float(f1_score(y_true, pred, labels=range(k), average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, pred, labels=range(k), average="weighted", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "log_loss": float(log_loss(y_true, probs, labels=range(k))),
        "per_class": {name: {"roc_auc": aucs[c],
                             "f1": float(f1_score(onehot[:, c], (pred == c).astype(int), zero_division=0))}
                      for c, name in enumerate(classes)},
        "confusion_matrix": {"classes": list(classes),
                             "counts": confusion_matrix(y_true, pred, labels=range(k)).tolist()},
    }


def multilabel_metrics(y_true, probs, thresholds, labels) -> dict:
    """Metrics of a (B, K) 0/1 label matrix against (B, K) probabilities, decisions at the per-label
    ``thresholds``. ``roc_auc``/``pr_auc``: macro means over the labels with both values present;
    ``roc_auc_micro`` over every (bag, label) pair; ``f1`` macro, ``accuracy`` exact-set accuracy."""
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    pred = (probs >= np.asarray(thresholds, dtype=np.float64)).astype(int)
    ranked = [k for k in range(y_true.shape[1]) if 0 < y_true[:, k].sum() < len(y_true)]
    return {
        "n": int(len(y_true)),
        "label_counts": {name: int(y_true[:, k].sum()) for k, name in enumerate(labels)},
        "thresholds": [float(t) for t in thresholds],
        "roc_auc": float(roc_auc_score(y_true[:, ranked], probs[:, ranked], average="macro")) if ranked else None,
        "roc_auc_micro": _safe_auc(roc_auc_score, y_true.ravel(), probs.ravel()),
        "pr_auc": float(average_precision_score(y_true[:, ranked], probs[:, ranked], average="macro"))
        if ranked else None,
        "f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "f1_micro": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "hamming_loss": float(hamming_loss(y_true, pred)),
        "per_label": {name: {"n_positive": int(y_true[:, k].sum()),
                             "roc_auc": _safe_auc(roc_auc_score, y_true[:, k], probs[:, k]),
                             "pr_auc": _safe_auc(average_precision_score, y_true[:, k], probs[:, k]),
                             "f1": float(f1_score(y_true[:, k], pred[:, k], zero_division=0)),
                             "threshold": float(thresholds[k])}
                      for k, name in enumerate(labels)},
    }


def bootstrap_ci(y_true, scores, threshold, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 space=None) -> dict | None:
    """Percentile bootstrap intervals for ROC-AUC and F1 (at the fixed ``threshold``); beyond binary
    (``space``, arcmil.labels) for their macro averages over the classes or labels, each resample's
    ROC-AUC the mean over the classes it holds both ways.

    Resamples drawing a single class are skipped for ROC-AUC. ``n_boot=0`` returns None. All resamples
    of a chunk are scored at once from how often each bag is drawn: ROC-AUC in its Mann-Whitney form
    (ties count half), F1 from the confusion counts; both equal scikit-learn's per resample (tested),
    which called once per resample took 10 s for 3,000 bags."""
    from arcmil.labels import BINARY

    if n_boot <= 0:
        return None
    truth, scores, decision = (space or BINARY).one_vs_rest(y_true, scores, threshold)  # (n, K) each
    if not np.isfinite(scores).all():  # a NaN has no rank (scikit-learn's metrics refuse it too)
        raise ValueError(f"bootstrap_ci: {int((~np.isfinite(scores)).sum())} scores are not finite")
    truth, decision = truth.astype(np.int64), decision.astype(np.int64)
    n, rng = len(truth), np.random.default_rng(seed)
    aucs, f1s = [], []
    chunk = max(1, BOOTSTRAP_ELEMENTS // (n * truth.shape[1]))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        rows = rng.integers(0, n, (k, n))  # (k, n) resamples
        # (k, n): how many times resample r draws bag i
        counts = np.bincount((rows + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        auc, f1 = np.stack([_resampled_auc_f1(truth[:, c], scores[:, c], decision[:, c], counts)
                            for c in range(truth.shape[1])], axis=-1)  # (k, K) each
        ranked = ~np.isnan(auc).all(axis=1)
        aucs.append(np.nanmean(auc[ranked], axis=1))
        f1s.append(f1.mean(axis=1))
    aucs, f1s = np.concatenate(aucs), np.concatenate(f1s)
    tail = (1 - level) / 2 * 100

    def interval(values):
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])] if len(values) else None

    return {"level": level, "n_boot": n_boot, "roc_auc": interval(aucs), "f1": interval(f1s)}


def _resampled_auc_f1(y_true, scores, pred, counts) -> tuple[np.ndarray, np.ndarray]:
    """One binary column under the resamples ``counts`` (k, n) (times each bag is drawn): (k,) ROC-AUC
    (NaN where a resample holds one class) and (k,) F1 (0 where nothing is positive, as zero_division=0).
    ROC-AUC = P(positive scored above negative) + P(tie) / 2, counted over groups of equal scores."""
    positives, negatives = counts * y_true, counts * (1 - y_true)  # (k, n)
    tp, fp, fn = (positives * pred).sum(1), (negatives * pred).sum(1), (positives * (1 - pred)).sum(1)
    f1 = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    pos = np.add.reduceat(positives[:, order], group_starts, axis=1)  # (k, groups) in ascending score
    neg = np.add.reduceat(negatives[:, order], group_starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives scored strictly lower than each group
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    auc = (pos * (2 * below + neg)).sum(1) / np.maximum(2 * n_pos * n_neg, 1)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan), f1
