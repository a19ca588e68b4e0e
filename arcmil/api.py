"""A scikit-learn-shaped estimator for notebooks, over the same pipeline as the command line."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from arcmil.calibration import calibrator_from_dict
from arcmil.config import SCORE_BATCH_SIZE
from arcmil.data import BagSet, Normalizer, load_bags, validate
from arcmil.errors import ConfigError
from arcmil.labels import LabelSpace
from arcmil.settings import IG_STEPS, INFERRED, ExperimentConfig, resolve


def as_bags(X, y=None, *, require_labels: bool = False) -> BagSet:
    """A validated BagSet from a BagSet, a bag file/store path, or a list of (n_i, D) arrays (+ ``y``)."""
    if isinstance(X, BagSet):
        return X
    if isinstance(X, (str, os.PathLike)):
        return load_bags(X, require_labels=require_labels)
    bags = [np.asarray(b, dtype=np.float32) for b in X]
    labels = None if y is None else np.asarray(y)
    return validate(BagSet(bags, labels, np.array([str(i) for i in range(len(bags))])),
                    require_labels=require_labels)


class MILClassifier:
    """``MILClassifier(model="transmil", epochs=20, d_model=64).fit(bags)``.

    Keyword arguments are training settings (TrainConfig: seed, epochs, batch_size, lr, …), evaluation
    settings (EvalConfig: normalize, threshold_method, …) or the model's hyper-parameters. ``fit`` runs
    arcmil's pipeline (split when the bags have none, early stopping on validation, threshold tuned on
    validation) and sets ``model_``, ``threshold_``, ``normalizer_``, ``results_`` (the run's metrics and
    history), ``label_space_`` and ``classes_``: [0, 1] (binary), the class names (multi-class: integers
    when the labels were) or the label names (multi-label; ``y`` a (B, K) 0/1 matrix or ``"a|b"`` strings).
    """

    def __init__(self, model: str = "attention_mil", **params):
        self.model = model
        self.params = params

    def get_params(self, deep: bool = True) -> dict:
        return {"model": self.model, **self.params}

    def set_params(self, **params) -> "MILClassifier":
        self.model = params.pop("model", self.model)
        self.params.update(params)
        return self

    def config(self) -> ExperimentConfig:
        """The run ``fit`` does: the same resolved config as ``arcmil train`` with these settings."""
        return resolve("train", {"model": self.model, "progress": False, **self.params})

    def fit(self, X, y=None) -> "MILClassifier":
        from arcmil.checks import check_inputs
        from arcmil.pipeline import run_experiment

        bags = as_bags(X, y, require_labels=True)
        config = self.config()
        overrides = config.overrides(self.model)
        check_inputs(bags, self.model, config.train, overrides, evaluation=config.evaluation)
        result = run_experiment(bags, self.model, config.train, evaluation=config.evaluation, **overrides)
        self.model_, self.threshold_, self.normalizer_ = result.model, result.threshold, result.normalizer
        self.calibrator_ = result.calibrator
        self.results_, self.label_space_ = result.to_dict(), bags.label_space
        self.classes_ = _classes(self.label_space_)
        self.model_name_, self.threshold_method_ = self.model, config.evaluation.threshold_method
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ConfigError("this MILClassifier is not fitted yet; call fit() or MILClassifier.load() first")

    def predict_proba(self, X, batch_size: int = SCORE_BATCH_SIZE) -> np.ndarray:
        """(n_bags, K) calibrated probabilities, one column per ``classes_`` entry: binary the
        probabilities of class 0 and class 1; multi-class rows summing to 1; multi-label each label's own."""
        probs = self._scored(as_bags(X), batch_size).probs
        return np.column_stack([1.0 - probs, probs]) if self.label_space_.binary else probs

    def predict(self, X) -> np.ndarray:
        """Per bag: 0/1 at the validation-tuned ``threshold_`` (binary), the most probable of ``classes_``
        (multi-class), or a (n_bags, K) 0/1 row at each label's threshold (multi-label)."""
        space = self.label_space_
        probs = self.predict_proba(X)
        decision = space.decide(probs[:, 1] if space.binary else probs, self.threshold_)
        return self.classes_[decision] if space.kind == "multiclass" else decision

    def score(self, X, y=None) -> float:
        """Accuracy of ``predict`` (scikit-learn's classifier convention; multi-label: exact label sets)."""
        bags = as_bags(X, y, require_labels=True).in_space(self.label_space_)
        pred = self.predict(bags)
        truth = self.classes_[bags.labels] if self.label_space_.kind == "multiclass" else bags.labels
        return float(np.mean((pred == truth).reshape(len(truth), -1).all(axis=1)))

    def _scored(self, bags: BagSet, batch_size: int = SCORE_BATCH_SIZE):
        from arcmil.scoring import check_fits, score_bags

        self._check_fitted()
        check_fits(bags, self.model_.config)
        return score_bags(self.model_, bags, self.normalizer_, batch_size=batch_size, device=self._device,
                          calibrator=self.calibrator_, space=self.label_space_)

    def explain(self, X, methods=("weights", "occlusion", "integrated_gradients"), steps: int = IG_STEPS
                ) -> pd.DataFrame:
        """One row per window with each method's importance (see ``arcmil explain``)."""
        from arcmil.explain import explain_bags

        self._check_fitted()
        bags = as_bags(X).in_space(self.label_space_)
        return explain_bags(self.model_, bags, list(methods), normalizer=self.normalizer_, calibrator=self.calibrator_,
                            steps=steps, device=self._device)

    @property
    def _device(self):
        from arcmil.scoring import model_device

        return model_device(self.model_)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """A checkpoint that ``MILClassifier.load`` and ``arcmil predict`` read, written whole; an existing
        file is refused unless ``overwrite``."""
        from arcmil.checkpoint import save_checkpoint
        from arcmil.outputs import write_new_file
        from arcmil.report import clean_json

        self._check_fitted()
        write_new_file(path, lambda tmp: save_checkpoint(
            tmp, self.model_, self.model_name_, threshold=self.threshold_, threshold_method=self.threshold_method_,
            normalizer=self.normalizer_, calibrator=self.calibrator_, label_space=self.label_space_,
            extra={"results": clean_json(self.results_)}),
            overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "MILClassifier":
        from arcmil.checkpoint import load_checkpoint

        model, meta = load_checkpoint(path, device)
        clf = cls(meta["model_name"], **{k: v for k, v in meta["model_config"].items() if k not in INFERRED},
                  **({"ensemble": meta["ensemble"]["size"], "seed": meta["ensemble"]["seeds"][0]}
                     if "ensemble" in meta else {}))
        clf.model_, clf.threshold_ = model, meta["threshold"]
        clf.label_space_ = LabelSpace.from_dict(meta.get("label_space"))
        clf.normalizer_, clf.classes_ = Normalizer.from_dict(meta["normalization"]), _classes(clf.label_space_)
        clf.calibrator_ = calibrator_from_dict(meta.get("calibration"), clf.label_space_)
        clf.results_ = meta.get("results", {})  # the run's results as after fit (none in older checkpoints)
        clf.model_name_, clf.threshold_method_ = meta["model_name"], meta["threshold_method"]
        return clf


def _classes(space: LabelSpace) -> np.ndarray:
    """``classes_``: [0, 1], the class names as ``LabelSpace.names`` writes them, or the label names."""
    if space.kind == "multiclass":
        return space.names(np.arange(len(space.classes)))
    return np.array([0, 1]) if space.binary else np.asarray(space.classes)
