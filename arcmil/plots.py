"""PNG figures of a run: ROC, precision-recall, reliability, training curves, window-attention heatmap."""
from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402


def _plain_text(plot):
    """Draw ``plot``'s figure with mathtext off: class names and bag ids from the data are text, never
    TeX (a ``$`` in a name must not fail savefig). Scoped to arcmil's own figures, not the process's."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return wrapper


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@_plain_text
def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "ROC") -> None:
    """curves: label -> (y_true, scores); one ROC line each, its AUC in the legend."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for label, (y, scores) in curves.items():
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(y, scores):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


@_plain_text
def plot_pr(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "Precision-recall") -> None:
    """curves: label -> (y_true, scores); one precision-recall line each, its average precision in the legend."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for label, (y, scores) in curves.items():
        precision, recall, _ = precision_recall_curve(y, scores)
        ax.step(recall, precision, where="post", label=f"{label} (AP {average_precision_score(y, scores):.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


@_plain_text
def plot_calibration(curves: dict[str, tuple[np.ndarray, np.ndarray]], path, title: str = "Reliability",
                     n_bins: int = 10) -> None:
    """Reliability diagram: curves maps label -> (y_true, probabilities); observed frequency against mean
    predicted probability in equal-width bins (scikit-learn's calibration_curve), the diagonal is perfect."""
    from arcmil.calibration import expected_calibration_error

    fig, ax = plt.subplots(figsize=(6, 5.5))
    for label, (y, probs) in curves.items():
        observed, predicted = calibration_curve(y, probs, n_bins=n_bins, strategy="uniform")
        ece = expected_calibration_error(y, probs)
        ax.plot(predicted, observed, marker="o", ms=3, label=f"{label} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="mean predicted probability", ylabel="observed positive fraction", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


@_plain_text
def plot_training_curves(history: list[dict], path, best_epoch: int | list[int], title: str = "") -> None:
    """Loss and validation ROC-AUC per epoch, the best epoch marked; an ensemble's history (rows with a
    ``member``, ``best_epoch`` one per member) draws each member's curves, its best epoch as a star."""
    members = sorted({row["member"] for row in history}) if history and "member" in history[0] else [None]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for member in members:
        rows = [row for row in history if row.get("member") == member]
        epochs = [row["epoch"] for row in rows]
        name = "" if member is None else f", member {member}"
        lines = {"train": ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train" + name),
                 "val": ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", label="validation" + name),
                 "auc": ax_auc.plot(epochs, [r["val_roc_auc"] for r in rows], marker="o", label=f"member {member}")}
        if member is not None:  # its best epoch, on each of its lines
            best = rows[best_epoch[member] - 1]
            for key, ax, value in (("train", ax_loss, "train_loss"), ("val", ax_loss, "val_loss"),
                                   ("auc", ax_auc, "val_roc_auc")):
                ax.plot(best["epoch"], best[value], marker="*", ms=12, c=lines[key][0].get_color())
    ax_loss.set(xlabel="epoch", ylabel="weighted loss", title="loss")
    ax_auc.set(xlabel="epoch", ylabel="ROC-AUC", title="validation ROC-AUC")
    if members == [None]:
        for ax in (ax_loss, ax_auc):
            ax.axvline(best_epoch, ls=":", c="grey", label="best epoch")
    else:
        ax_auc.legend(fontsize=7, title="stars: best epochs", title_fontsize=7)
    ax_loss.legend(fontsize=7 if members != [None] else None)
    fig.suptitle(title)
    _save(fig, path)


@_plain_text
def plot_window_heatmap(values: list[np.ndarray], captions: list[str], bag_ids, path, instance_labels=None,
                        title: str = "window weights", signed: bool = False, colorbar: str = "weight") -> None:
    """Heatmap: one row per bag (named by its id and caption, LabelSpace.caption), one column per window;
    padding blank; true positive windows (when ``instance_labels`` is given) are outlined. ``signed``
    centres a diverging map on 0."""
    width = max(len(v) for v in values)
    grid = np.full((len(values), width), np.nan)
    for row, v in enumerate(values):
        grid[row, : len(v)] = v
    fig, ax = plt.subplots(figsize=(max(7.0, 2.5 + 0.45 * width), 1.0 + 0.35 * len(values)))
    if signed:
        limit = np.nanmax(np.abs(grid)) or 1.0
        image = ax.imshow(grid, cmap="RdBu_r", aspect="auto", vmin=-limit, vmax=limit)
    else:
        image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0)
    fig.colorbar(image, ax=ax, label=colorbar)
    if instance_labels is not None:
        for row, marks in enumerate(instance_labels):
            for col in np.flatnonzero(marks):
                ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_yticks(range(len(values)),
                  [f"{b}  {caption}" for b, caption in zip(bag_ids, captions)],
                  fontsize=7)
    ax.set_xticks(range(width))
    ax.set_xlabel("window" + ("  (red: true positive windows)" if instance_labels is not None else ""))
    ax.set_title(title, fontsize=9)
    _save(fig, path)


@_plain_text
def plot_document_explanations(importances: dict[str, np.ndarray], path, title: str = "", marks=None) -> None:
    """One document: a row per explanation method (name -> (n,) importances, each row scaled to its
    largest magnitude), a column per window; windows that ``marks`` flags are outlined in red."""
    grid = np.vstack([v / (np.nanmax(np.abs(v)) or 1.0) for v in importances.values()])
    n = grid.shape[1]
    fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 2.5 + 0.35 * n)), 1.3 + 0.45 * len(importances)))
    image = ax.imshow(grid, cmap="RdBu_r", aspect="auto", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax, label="importance / max")
    for col in np.flatnonzero(marks) if marks is not None else ():
        for row in range(len(importances)):
            ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_yticks(range(len(importances)), list(importances), fontsize=8)
    if n <= 40:
        ax.set_xticks(range(n))
    ax.set_xlabel("window" + ("  (red: true positive windows)" if marks is not None else ""))
    ax.set_title(title, fontsize=9)
    _save(fig, path)


@_plain_text
def plot_deletion_curves(summary: dict, path, title: str = "") -> None:
    """Mean drop of the explained logit against the share of windows removed, for each method's ranking
    and for random orders (``arcmil.faithfulness.summarize``'s record)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    removed = 100 * np.asarray(summary["fractions"])
    for method, scores in summary["methods"].items():
        ax.plot(removed, scores["curve"], marker="o", ms=3, label=f"{method} (AOPCR {scores['aopcr']:.3f})")
    ax.plot(removed, summary["random_curve"], ls="--", c="grey", label="random order")
    ax.set(xlabel="windows removed, most important first (%)", ylabel="mean drop of the explained logit",
           title=title)
    ax.legend(fontsize=8)
    _save(fig, path)
