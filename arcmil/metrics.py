"""Threshold search and binary metrics, all computed by scikit-learn."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

THRESHOLD_METHODS = ("f1", "youden", "fixed")


def tune_threshold(y_true, scores, method: str = "f1", fixed: float = 0.5) -> float:
    """Decision threshold (predict positive when score >= threshold) chosen on validation data.

    'f1' maximises F1 and 'youden' maximises TPR - FPR, each searched exactly over the distinct
    scores (the lowest such threshold wins ties); 'fixed' returns ``fixed``.
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
        return float(thresholds[np.argmax(f1)])
    if method == "youden":
        fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
        # thresholds descend; the first is +inf (predict nothing). Reverse so argmax keeps the lowest.
        j = (tpr - fpr)[1:][::-1]
        return float(thresholds[1:][::-1][np.argmax(j)])
    raise ValueError(f"unknown threshold method {method!r}; use one of {', '.join(THRESHOLD_METHODS)}")


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


def bootstrap_ci(y_true, scores, threshold: float, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict | None:
    """Percentile bootstrap intervals for ROC-AUC and F1 (at the fixed ``threshold``).

    Resamples drawing a single class are skipped for ROC-AUC. ``n_boot=0`` returns None."""
    if n_boot <= 0:
        return None
    y_true = np.asarray(y_true).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    pred = (scores >= threshold).astype(int)
    rng = np.random.default_rng(seed)
    aucs, f1s = [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(y_true), len(y_true))
        f1s.append(f1_score(y_true[i], pred[i], zero_division=0))
        if len(np.unique(y_true[i])) == 2:
            aucs.append(roc_auc_score(y_true[i], scores[i]))
    tail = (1 - level) / 2 * 100

    def interval(values):
        return [float(v) for v in np.percentile(values, [tail, 100 - tail])] if values else None

    return {"level": level, "n_boot": n_boot, "roc_auc": interval(aucs), "f1": interval(f1s)}
