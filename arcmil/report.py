"""Writing a run: checkpoint, results JSON/CSV, predictions, plots (into a directory arcmil.outputs stages)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from arcmil.checkpoint import save_checkpoint
from arcmil.config import ensemble_curve_name
from arcmil.models.ensemble import Ensemble
from arcmil.plots import plot_calibration, plot_pr, plot_roc, plot_training_curves, plot_window_heatmap
from arcmil.scoring import window_weights_frame


def clean_json(obj):
    """JSON-safe plain data (also for weights-only checkpoints): numpy scalars to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, str):
        return str(obj)  # plain str, also from subclasses such as torch.__version__
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def markdown_table(rows: list[dict], columns) -> str:
    """A Markdown table; floats with 4 decimals, None blank."""
    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


SINGLE_COLUMNS = ("model", "tag", "test_roc_auc", "test_pr_auc", "test_f1", "test_precision", "test_recall",
                  "threshold", "best_epoch")  # a one-run summary table's (those the row holds: reported)


def reported(names, record: dict) -> list[str]:
    """The ``names`` (metrics, columns) that ``record`` holds, in order: tables and tests show what a
    run's label space reports (precision and recall are binary's; arcmil.labels)."""
    return [name for name in names if name in record]


def results_row(result) -> dict:
    """The flat one-line summary of a RunResult used by the results CSV and the comparison table."""
    row = {"tag": result.tag, "model": result.model_name, "seed": result.train_config.seed,
           **result.label_space.threshold_columns(result.threshold),
           "threshold_method": result.eval_config.threshold_method,
           "best_epoch": result.best_epoch, "epochs_run": result.epochs_run}
    row.update({f"val_{m}": result.validation[m] for m in result.label_space.row_metrics})
    row.update({f"test_{m}": result.test[m] for m in result.label_space.row_metrics})
    ci = result.test["ci"] or {}
    for metric in ("roc_auc", "f1"):
        low, high = ci.get(metric) or (None, None)
        row.update({f"test_{metric}_ci_low": low, f"test_{metric}_ci_high": high})
    row["train_seconds"] = result.train_seconds
    return row


def write_results(directory: Path, result) -> None:
    stem = f"stage3_{result.model_name}_results"
    (directory / f"{stem}.json").write_text(json.dumps(clean_json(result.to_dict()), indent=2))
    pd.DataFrame([results_row(result)]).to_csv(directory / f"{stem}.csv", index=False)


def write_run(directory: str | os.PathLike, result, n_attention_bags: int = 16) -> Path:
    """Write every output of one run into ``directory`` (created; expected new or empty)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / f"best_{result.model_name}.pth", result.model, result.model_name,
                    threshold=result.threshold, threshold_method=result.eval_config.threshold_method,
                    normalizer=result.normalizer, calibrator=result.calibrator, label_space=result.label_space,
                    extra={"results": clean_json(result.to_dict())})
    write_results(directory, result)
    result.predictions.to_csv(directory / "predictions.csv", index=False)
    if "w_0" not in result.predictions.columns:  # long bags: window weights in long format
        pd.concat([window_weights_frame(result.parts[name], ev) for name, ev in result.evaluations.items()]
                  ).to_csv(directory / "window_weights.csv", index=False)
    pd.DataFrame({"bag_id": np.concatenate([part.bag_ids for part in result.parts.values()]),
                  "split": np.repeat(list(result.parts), [len(part) for part in result.parts.values()])}
                 ).to_csv(directory / "split.csv", index=False)

    tag, space = result.tag, result.label_space
    curves = _curves(result)
    plot_roc(curves, directory / "roc.png", title=f"ROC — {tag}")
    plot_pr(curves, directory / "pr.png", title=f"Precision-recall — {tag}")
    method = result.calibrator.method
    # an ensemble's probabilities are its members' calibrated ones, averaged: one curve, named so
    raw = ensemble_curve_name(result.model.calibrators[0].method) if isinstance(result.model, Ensemble) \
        else "uncalibrated"
    reliability = {f"{name}, {kind}": space.reliability_pairs(ev.labels, probs)
                   for name, ev in result.evaluations.items() if name in ("val", "test")
                   for kind, probs in ((raw, space.probabilities(torch.from_numpy(ev.logits)).numpy()),
                                       (method, ev.probs))
                   if kind == raw or method != "none"}
    plot_calibration(reliability, directory / "calibration.png", title=f"Reliability — {tag}")
    plot_training_curves(result.history, directory / "training_curves.png", result.best_epoch, title=tag)
    write_attention_plot(directory / "attention.png", result, n_attention_bags)
    return directory


def _curves(result) -> dict:
    """ROC / precision-recall lines: validation and test (binary), or each class's one-vs-rest line on
    the test split (a class present on one side only has no curve)."""
    space = result.label_space
    if space.binary:
        return {name: (ev.labels, ev.probs) for name, ev in result.evaluations.items() if name in ("val", "test")}
    test = result.evaluations["test"]
    truth, scores, _ = space.one_vs_rest(test.labels, test.probs, result.threshold)
    return {f"test, {name}": (truth[:, k], scores[:, k]) for k, name in enumerate(space.classes)
            if 0 < truth[:, k].sum() < len(truth)}


def write_attention_plot(path: Path, result, n_bags: int) -> None:
    """Heatmap of test bags chosen with a fixed seed (LabelSpace.display_sample)."""
    part, ev, space = result.parts["test"], result.evaluations["test"], result.label_space
    chosen = space.display_sample(part.labels, n_bags)
    by_position = {int(i): k for k, i in enumerate(ev.index)}  # BagSet position -> evaluation row
    rows = [by_position[int(i)] for i in chosen]
    plot_window_heatmap([ev.class_weights(r) for r in rows], [space.caption(part.labels[i], ev.probs[r])
                                                        for i, r in zip(chosen, rows)], part.bag_ids[chosen], path,
                   instance_labels=None if part.instance_labels is None else [part.instance_labels[i] for i in chosen],
                   title=f"window weights, test bags — {result.tag}")
