"""Run settings from YAML and flags: one flat namespace of model and training keys, checked by name."""
from __future__ import annotations

import dataclasses
import os
import typing

import yaml

from arcmil.data.prepare import NORMALIZATIONS
from arcmil.errors import ConfigError
from arcmil.metrics import THRESHOLD_METHODS
from arcmil.models import get_entry
from arcmil.models.attention import ATTENTIONS
from arcmil.models.config import INITS, POOLS, POS_ENCODINGS
from arcmil.models.registry import closest, config_classes
from arcmil.train import LR_SCHEDULES, MONITORS, PRECISIONS, TrainConfig

RUN_KEYS = {"model": str, "models": str, "data": str, "out": str, "seeds": str, "folds": int, "repeats": int,
            "val_fraction": float, "tracker": str}
INFERRED = {"input_dim"}  # taken from the data, never set by hand


def _settable(*classes) -> list[tuple[dataclasses.Field, type]]:
    """(field, type) of the config dataclasses' settable fields."""
    out = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        out += [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in INFERRED]
    return out


MODEL_FIELDS = {f.name: kind for f, kind in _settable(*config_classes())}
TRAIN_FIELDS = {f.name: kind for f, kind in _settable(TrainConfig)}
DEFAULTS = {f.name: f.default for f, _ in _settable(*config_classes(), TrainConfig)}
CHOICES = {"monitor": tuple(MONITORS), "normalize": NORMALIZATIONS, "threshold_method": THRESHOLD_METHODS,
           "pos_enc": POS_ENCODINGS, "pool": POOLS, "attention": ATTENTIONS, "precision": PRECISIONS,
           "lr_schedule": LR_SCHEDULES, "init": INITS}
ALL_KEYS = {**RUN_KEYS, **MODEL_FIELDS, **TRAIN_FIELDS}


def read_yaml(path: str | os.PathLike) -> dict:
    """A flat mapping of setting names (the flags' names with underscores) to values."""
    try:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value")
    for key, value in data.items():
        if key not in ALL_KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}{closest(str(key), ALL_KEYS)}")
        want = ALL_KEYS[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{path}: setting {key!r} expects {want.__name__}, got {value!r}")
    return data


def train_config(settings: dict) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_FIELDS})


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




def resolved_train_settings(settings: dict) -> dict:
    """Every setting of one ``arcmil train`` run, defaults filled in: what config.yaml records and
    ``--print-config`` shows. Feeding it back (``--config``) reproduces the run."""
    from arcmil.models.registry import make_config

    model = settings.get("model", "attention_mil")
    config = make_config(model, **model_overrides(model, settings, strict=True))
    resolved = {"model": model, **{k: settings[k] for k in ("data", "tracker") if settings.get(k)},
                **dataclasses.asdict(train_config(settings))}
    resolved.update({k: v for k, v in dataclasses.asdict(config).items() if k not in INFERRED})
    return resolved
