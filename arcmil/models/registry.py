"""A tiny model registry: ``@register(name, ConfigClass, **preset)`` and ``build_model(name, **cfg)``.

The built-in models are declared below by the path of their class, so that their names and settings
are known without importing torch (the command line's ``--help``); a class is imported when a model
is first built.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, fields

from arcmil.errors import ConfigError
from arcmil.models.config import (
    AttentionMILConfig,
    InstanceMaxConfig,
    PooledStatsConfig,
    TransformerMILConfig,
    TransMILConfig,
)


@dataclass(frozen=True)
class ModelEntry:
    """``model``: the class, or the path 'module:Class' of a built-in one (see ``model_cls``)."""

    name: str
    model: type | str
    config_cls: type
    preset: dict

    @property
    def model_cls(self) -> type:
        if isinstance(self.model, str):
            module, _, cls = self.model.partition(":")
            return getattr(importlib.import_module(module), cls)
        return self.model


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, config_cls: type, **preset):
    """Register a model class under ``name``; ``preset`` fixes config values for a named variant."""

    def decorator(model_cls):
        _REGISTRY[name] = ModelEntry(name, model_cls, config_cls, preset)
        return model_cls

    return decorator


for _name, _path, _config, _preset in [
    ("attention_mil", "attention_mil:AttentionMIL", AttentionMILConfig, {}),
    ("attention_mil_gated", "attention_mil:AttentionMIL", AttentionMILConfig, {"gated": True}),
    ("instance_max", "instance_max:InstanceMax", InstanceMaxConfig, {}),
    ("transformer_mil", "transformer_mil:TransformerMIL", TransformerMILConfig, {}),
    ("transformer_mil_topk", "transformer_mil:TransformerMIL", TransformerMILConfig, {"pool": "topk"}),
    ("transmil", "transmil:TransMIL", TransMILConfig, {}),
    ("transmil_dual", "transmil:TransMIL", TransMILConfig, {"dual": True}),
    ("transmil_nystrom", "transmil:TransMIL", TransMILConfig, {"attention": "nystrom"}),
    ("pooled_logistic", "pooled_stats:PooledStats", PooledStatsConfig, {"encoding": "stats", "classifier": "logistic"}),
    ("pooled_svm", "pooled_stats:PooledStats", PooledStatsConfig, {"encoding": "stats", "classifier": "svm"}),
    ("fisher_vector", "pooled_stats:PooledStats", PooledStatsConfig, {"encoding": "fisher", "classifier": "logistic"}),
]:
    _REGISTRY[_name] = ModelEntry(_name, "arcmil.models." + _path, _config, _preset)


def builtin_classes() -> dict[str, str]:
    """Each built-in model class's name -> the module that defines it (arcmil.models imports them lazily)."""
    paths = (entry.model.partition(":") for entry in _REGISTRY.values() if isinstance(entry.model, str))
    return {cls: module for module, _, cls in paths}


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def config_classes() -> list[type]:
    """The distinct config dataclasses of the registered models, in registration order."""
    return list(dict.fromkeys(entry.config_cls for entry in _REGISTRY.values()))


def closest(name: str, valid) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}{closest(name, _REGISTRY)}; valid models: {', '.join(model_names())}")
    return _REGISTRY[name]


def fitted_by_estimator(name: str) -> bool:
    """Whether model ``name`` is fitted in one go by scikit-learn (no epochs, no seed that changes it)."""
    return getattr(get_entry(name).config_cls, "FITTED_BY_ESTIMATOR", False)


def make_config(name: str, **overrides):
    """The frozen config of model ``name``: defaults, then the variant's preset, then ``overrides``
    (which may repeat a preset value but not contradict it: that would train another model under
    the variant's name)."""
    entry = get_entry(name)
    valid = {f.name for f in fields(entry.config_cls)}
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"{key!r} is not a setting of {name}{closest(key, valid)}; "
                              f"valid: {', '.join(sorted(valid))}")
    for key, value in entry.preset.items():
        if key in overrides and overrides[key] != value:
            base = [e.name for e in _REGISTRY.values() if e.model == entry.model and not e.preset]
            raise ConfigError(f"{name} is defined by {key}={value!r}; {key}={overrides[key]!r} contradicts it"
                              + (f" (use model {base[0]!r} to choose {key})" if base else ""))
    return entry.config_cls(**{**entry.preset, **overrides})


def build_model(name: str, **overrides) -> "torch.nn.Module":  # noqa: F821
    """Build a registered model; unknown names and keys raise ConfigError listing the valid ones."""
    return get_entry(name).model_cls(make_config(name, **overrides))
