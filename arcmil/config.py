"""How a model is trained and evaluated: ``TrainConfig`` and ``EvalConfig`` with the choices of their
settings. Torch-free, like ``arcmil.models.config``, so that the command line lists every setting and
answers ``--help`` without importing torch, scikit-learn or pandas."""
from __future__ import annotations

from dataclasses import dataclass

from arcmil.errors import ConfigError, check_choices

MONITORS = {"val_loss": "min", "val_roc_auc": "max", "val_pr_auc": "max"}
PRECISIONS = ("fp32", "bf16")
# torch.compile's modes: 'reduce-overhead' replays CUDA graphs (one per batch shape), which removes the launch
# cost that bounds a small-batch GPU step
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_SCHEDULES = ("cosine", "plateau")
DECAY_SCOPES = ("all", "weights")  # weight decay on every parameter, or on weight matrices only
NORMALIZATIONS = ("l2", "standardize", "none")
CALIBRATIONS = ("platt", "temperature", "isotonic", "none")
THRESHOLD_METHODS = ("f1", "youden", "fixed")
SCORE_BATCH_SIZE = 64  # bags per scoring batch at most (predict, the Python API; arcmil.data.batching)

def ensemble_name(name: str, size: int) -> str:
    """A model's name in runs and tables as an ensemble of ``size`` (``<name>_ens<size>``; itself alone)."""
    return f"{name}_ens{size}" if size > 1 else name


def ensemble_curve_name(member_calibration: str) -> str:
    """What an ensemble's probabilities are, named by its members' calibration (reliability figures)."""
    calibrated = "uncalibrated" if member_calibration == "none" else f"{member_calibration}-calibrated"
    return f"mean of {calibrated} members"


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (the model block and the evaluation aside: see ``EvalConfig``); identical for
    every model in a comparison."""

    seed: int = 0
    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    weight_decay_on: str = "all"  # 'weights': not biases, norms, the CLS token or position tables (docs/recipe.md)
    patience: int = 3
    monitor: str = "val_loss"
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    lr_factor: float = 0.5
    lr_patience: int = 1
    bucket_by_length: bool = True  # training batches of similar lengths when lengths vary (README: recipe table)
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    compile_mode: str = "default"  # with compile (COMPILE_MODES)
    progress: bool = True
    ensemble: int = 1  # > 1: that many members, one seed each (member 0: seed), averaged (arcmil.models.ensemble)

    def __post_init__(self):
        check_choices(self, {"monitor": tuple(MONITORS), "precision": PRECISIONS, "lr_schedule": LR_SCHEDULES,
                             "weight_decay_on": DECAY_SCOPES, "compile_mode": COMPILE_MODES})
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"compile_mode {self.compile_mode!r} applies to a compiled model: add --compile")
        for name in ("epochs", "batch_size", "patience", "ensemble"):
            if getattr(self, name) < 1:
                hint = " (to train every epoch, set it to epochs or more)" if name == "patience" else ""
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}{hint}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")


@dataclass(frozen=True)
class EvalConfig:
    """How a trained model is evaluated, identical for every model in a comparison: the window
    normalisation (fitted on training bags), the probability calibration (fitted on validation; README:
    calibration table), the decision threshold (tuned on validation's calibrated scores, or
    ``fixed_threshold``), the number of bootstrap resamples behind the test intervals (0: none) and
    whether the training bags are scored too (``score_train``: their rows in predictions.csv; scoring
    them costs about a third of a training epoch)."""

    normalize: str = "l2"
    calibrate: str = "platt"
    threshold_method: str = "f1"
    fixed_threshold: float = 0.5
    n_bootstrap: int = 1000
    score_train: bool = False

    def __post_init__(self):
        check_choices(self, {"normalize": NORMALIZATIONS, "calibrate": CALIBRATIONS,
                             "threshold_method": THRESHOLD_METHODS})
        if self.n_bootstrap < 0:
            raise ConfigError(f"n_bootstrap must be 0 or more, got {self.n_bootstrap}")
