"""Checks of a run's input, made before anything is written or trained: the split or folds (the classes
each part needs), a calibration the label space has no form of, and bags against the model."""
from __future__ import annotations

import numpy as np

from arcmil.config import EvalConfig, TrainConfig
from arcmil.data import BagSet, assign_split, split_parts
from arcmil.errors import ConfigError, DataError
from arcmil.models.registry import fitted_by_estimator, make_config
from arcmil.scoring import check_fits


def check_cv_inputs(bags: BagSet, folds: int) -> None:
    """Labels with at least ``folds`` bags of each class (multi-label: with and without each label)."""
    if bags.labels is None:
        raise DataError(bags.source, "cross-validation needs labels", field="labels")
    space = bags.label_space
    counts = space.class_counts(bags.labels)
    if space.kind == "multilabel":
        without = len(bags.labels) - counts
        k = int(np.argmin(np.minimum(counts, without)))
        if min(counts[k], without[k]) < folds:
            raise DataError(bags.source, f"{folds} folds need at least {folds} bags with and {folds} without each "
                            f"label, label {space.classes[k]!r} is on {counts[k]} of {len(bags.labels)}",
                            field="labels")
        return
    smallest = int(counts.min())
    if smallest < folds:
        what = "the smaller class" if space.binary else f"class {space.classes[int(counts.argmin())]!r}"
        raise DataError(bags.source, f"{folds} folds need at least {folds} bags of each class, {what} "
                        f"has {smallest}", field="labels")


def check_ensemble(model_name: str, size: int) -> None:
    """An ensemble needs members that differ: a model fitted deterministically (classical) is refused."""
    if size > 1 and fitted_by_estimator(model_name):
        raise ConfigError(f"{model_name} is fitted deterministically by scikit-learn: an ensemble of "
                          f"{size} seeds would hold {size} identical members")


def check_inputs(bags: BagSet, model_name: str, cfg: TrainConfig, model_overrides: dict,
                 folds: int | None = None, evaluation: EvalConfig = EvalConfig()) -> None:
    """What can be wrong with a run's input, checked before anything is written: the split (the classes
    each part needs; with ``folds``, enough bags of each class for them), a calibration or a per-class
    attention the label space has no form of, an ensemble of a deterministic model, and bag lengths
    against the model."""
    check_ensemble(model_name, cfg.ensemble)
    if bags.label_space.binary and model_overrides.get("class_attention"):
        raise ConfigError("class_attention is for multi-class and multi-label data (one attention per class); "
                          "binary labels have one output")
    if bags.label_space.kind == "multiclass" and evaluation.calibrate == "isotonic":
        raise ConfigError("calibrate 'isotonic' has no multi-class form; use platt (vector scaling), temperature "
                          "or none")
    if folds:
        check_cv_inputs(bags, folds)
    else:
        split_parts(assign_split(bags, cfg.seed))
    check_fits(bags, make_config(model_name, input_dim=bags.dim, **bags.label_space.model_settings,
                                 **model_overrides))
