"""Every setting of a run and its default, in one place: the flat namespace of YAML keys and flags
(run, training and model keys, checked by name) and ``ExperimentConfig``, the resolved run that
``train``, ``compare``, ``cv`` and ``MILClassifier`` execute and ``config.yaml`` records."""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml

from arcmil.config import (
    CALIBRATIONS,
    COMPILE_MODES,
    DECAY_SCOPES,
    LR_SCHEDULES,
    MONITORS,
    NORMALIZATIONS,
    PRECISIONS,
    THRESHOLD_METHODS,
    EvalConfig,
    TrainConfig,
    ensemble_name,
)
from arcmil.errors import ConfigError
from arcmil.models.config import ATTENTIONS, INITS, POOLS, POS_ENCODINGS, POS_SCALINGS
from arcmil.models.registry import closest, config_classes, get_entry, make_config

RUN_KEYS = {"model": str, "models": str, "data": str, "out": str, "seeds": str, "folds": int, "repeats": int,
            "val_fraction": float, "tracker": str, "trials": int, "timeout": float, "inner_folds": int,
            "storage": str, "space": str}
SEARCH_KEYS = ("trials", "timeout", "inner_folds", "storage", "space")
INFERRED = {"input_dim", "n_outputs", "n_support"}  # from the data (dimension, label space) or the fit, never by hand


def _settable(*classes) -> list[tuple[dataclasses.Field, type]]:
    """(field, type) of the config dataclasses' settable fields."""
    out = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        out += [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in INFERRED]
    return out


MODEL_FIELDS = {f.name: kind for f, kind in _settable(*config_classes())}
TRAIN_FIELDS = {f.name: kind for f, kind in _settable(TrainConfig)}
EVAL_FIELDS = {f.name: kind for f, kind in _settable(EvalConfig)}
DEFAULTS = {f.name: f.default for f, _ in _settable(*config_classes(), TrainConfig, EvalConfig)}
CHOICES = {"monitor": tuple(MONITORS), "normalize": NORMALIZATIONS, "calibrate": CALIBRATIONS,
           "threshold_method": THRESHOLD_METHODS,
           "pos_enc": POS_ENCODINGS, "pos_scale_by": POS_SCALINGS, "pool": POOLS, "attention": ATTENTIONS,
           "precision": PRECISIONS, "compile_mode": COMPILE_MODES,
           "lr_schedule": LR_SCHEDULES, "init": INITS, "weight_decay_on": DECAY_SCOPES}
ALL_KEYS = {**RUN_KEYS, **MODEL_FIELDS, **TRAIN_FIELDS, **EVAL_FIELDS}


def read_mapping(path: str | os.PathLike, what: str, expected: str) -> dict:
    """The YAML mapping in ``path`` (``what`` it is, for messages; ``expected``: its entries' form);
    an unreadable file, bad YAML or another type is a one-line ConfigError."""
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {expected}")
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    """A flat mapping of setting names (the flags' names with underscores) to values."""
    data = read_mapping(path, "config", "setting: value")
    for key, value in data.items():
        if key not in ALL_KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}{closest(str(key), ALL_KEYS)}")
        want = ALL_KEYS[key]
        if value is None:  # null: not set (config.yaml writes unset run keys so)
            continue
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{path}: setting {key!r} expects {want.__name__}, got {value!r}")
    return {k: v for k, v in data.items() if v is not None}


def train_config(settings: dict) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_FIELDS})


def eval_config(settings: dict) -> EvalConfig:
    return EvalConfig(**{k: v for k, v in settings.items() if k in EVAL_FIELDS})


def model_overrides(model_name: str, settings: dict, strict: bool = True) -> dict:
    """The model keys of ``settings`` that ``model_name`` has. ``strict``: a key it lacks is an error
    (``arcmil train``); otherwise it is skipped (``compare`` shares settings across models)."""
    entry = get_entry(model_name)
    valid = {f.name for f in dataclasses.fields(entry.config_cls)}
    out = {}
    for key, value in settings.items():
        if key not in MODEL_FIELDS:
            continue
        if key in valid:
            out[key] = value
        elif strict:
            raise ConfigError(f"setting {key!r} does not apply to model {model_name!r} "
                              f"(its settings: {', '.join(sorted(valid - INFERRED))})")
    return out


IG_STEPS = 32  # explain: integrated-gradient path steps
N_PLOTS = 12  # explain: bags shown in each heatmap
DEFAULT_MODEL = "attention_mil"
DEFAULT_MODELS = ("attention_mil", "transformer_mil", "transmil")
NO_SEARCH = dict.fromkeys(SEARCH_KEYS)  # compare and cv tune only when trials is set
# the run keys each command takes, with its defaults (None: not set, e.g. compare without folds)
COMMAND_KEYS = {
    "train": {"model": DEFAULT_MODEL, "data": None, "tracker": None},
    "compare": {"models": ",".join(DEFAULT_MODELS), "data": None, "seeds": None, "folds": None,
                "val_fraction": 0.2, "tracker": None, **NO_SEARCH},
    "cv": {"model": DEFAULT_MODEL, "data": None, "folds": 10, "repeats": 5, "val_fraction": 0.2, "tracker": None,
           **NO_SEARCH},
    "tune": {"model": DEFAULT_MODEL, "data": None, "val_fraction": 0.2, "tracker": None, **NO_SEARCH, "trials": 50},
}


@dataclass(frozen=True)
class SearchConfig:
    """A hyper-parameter search (``arcmil tune``; ``cv`` and ``compare`` with ``--tune``): ``trials`` to
    finish, an optional ``timeout`` in seconds per search, ``inner_folds`` (score each trial by inner
    CV of the training bags instead of the validation split), an Optuna ``storage`` URL (default: a
    SQLite file in the run directory) and a ``space`` YAML file overriding the search space."""

    trials: int = 50
    timeout: float | None = None
    inner_folds: int | None = None
    storage: str | None = None
    space: str | None = None

    def __post_init__(self):
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1, got {self.trials}")
        if self.inner_folds is not None and self.inner_folds < 2:
            raise ConfigError(f"inner_folds must be at least 2, got {self.inner_folds}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one ``train``, ``compare`` or ``cv`` run does, every default filled in.

    ``models``: one name (train, cv) or several (compare); ``seeds``: the training seeds (compare:
    one run per seed, or one CV repeat per seed; cv: seed, seed+1, ... one per repeat);
    ``model_settings``: the model's every hyper-parameter (train, cv), or those the user set, shared by
    the compared models (compare: each model's full config is in its own results);
    ``train`` / ``evaluation``: the training and evaluation settings, identical for every model;
    ``search``: the hyper-parameter search (tune; cv and compare with trials set), else None.
    """

    command: str
    models: tuple[str, ...]
    train: TrainConfig
    evaluation: EvalConfig = EvalConfig()
    model_settings: dict = field(default_factory=dict)
    data: str | None = None
    seeds: tuple[int, ...] = ()
    folds: int | None = None
    val_fraction: float = 0.2
    tracker: str | None = None
    search: SearchConfig | None = None

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1 (the validation share of each training fold), "
                              f"got {self.val_fraction}")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")

    @property
    def model(self) -> str:
        return self.models[0]

    def overrides(self, model_name: str) -> dict:
        """The model settings that apply to ``model_name``; in a comparison, keys a model lacks are skipped."""
        return model_overrides(model_name, self.model_settings, strict=self.command != "compare")

    def run_name(self) -> str:
        """The default output directory's stem: the model tag (``_ens<K>`` for an ensemble), 'compare' or
        'cv_<model>'."""
        if self.command == "train":
            return ensemble_name(make_config(self.model, **self.overrides(self.model)).tag(), self.train.ensemble)
        if self.command == "compare":
            return "compare"
        return f"{self.command}_{ensemble_name(self.model, self.train.ensemble)}"

    def to_dict(self) -> dict:
        """The flat mapping config.yaml holds and ``--config`` reads back: every setting of the run."""
        out = {"model": self.model} if self.command != "compare" else {"models": ",".join(self.models)}
        out["data"] = self.data
        if self.command == "compare":
            out["seeds"] = ",".join(map(str, self.seeds))
        if self.command == "cv":
            out["repeats"] = len(self.seeds)
        if self.command in ("compare", "cv"):
            out["folds"] = self.folds
        if self.command != "train":
            out["val_fraction"] = self.val_fraction
            out.update(dataclasses.asdict(self.search) if self.search else NO_SEARCH)
        out["tracker"] = self.tracker
        return {**out, **dataclasses.asdict(self.train), **dataclasses.asdict(self.evaluation), **self.model_settings}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def resolve(command: str, settings: dict) -> ExperimentConfig:
    """The run ``command`` does with ``settings`` (YAML and flags merged, flags winning; None = not given):
    the data source's preset first, then the settings, then the defaults; names checked (types are
    checked where the settings are read: argparse, ``read_yaml``)."""
    from arcmil.data.mil_datasets import source_preset

    given = {k: v for k, v in settings.items() if v is not None}
    for key in given:
        if key not in ALL_KEYS:
            raise ConfigError(f"unknown setting {key!r}{closest(str(key), ALL_KEYS)}")
        if key in RUN_KEYS and key not in COMMAND_KEYS[command]:
            raise ConfigError(f"setting {key!r} does not apply to arcmil {command}")
    given = {**source_preset(given.get("data")), **given}
    run = {**COMMAND_KEYS[command], **{k: given[k] for k in COMMAND_KEYS[command] if k in given}}
    cfg = train_config(given)
    models = tuple(m.strip() for m in run.get("models", run.get("model", "")).split(",") if m.strip())
    for name in models:
        get_entry(name)  # unknown names fail before any work
    if command == "compare":
        seeds = _seeds(run["seeds"]) if run["seeds"] is not None else (cfg.seed,)
    else:
        seeds = tuple(cfg.seed + r for r in range(run.get("repeats", 1)))
    model_settings = {k: v for k, v in given.items() if k in MODEL_FIELDS}
    for name in models:  # a setting a model lacks (train, cv) or contradicts fails here
        config = make_config(name, **model_overrides(name, model_settings, strict=command != "compare"))
    if command != "compare":  # one model: its every setting, defaults included
        model_settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in INFERRED}
    search = None
    if run.get("trials") is not None:
        search = SearchConfig(**{k: run[k] for k in SEARCH_KEYS if run[k] is not None})
    elif any(run.get(k) is not None for k in SEARCH_KEYS):
        raise ConfigError(f"{', '.join(k for k in SEARCH_KEYS if run.get(k) is not None)} set without a search: "
                          "give the number of trials (--tune N)")
    return ExperimentConfig(command, models, cfg, eval_config(given), model_settings, data=run["data"], seeds=seeds,
                            folds=run.get("folds"), val_fraction=run.get("val_fraction", 0.2), tracker=run["tracker"],
                            search=search)


def _seeds(text) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"seeds expects comma-separated integers, got {text!r}") from None
