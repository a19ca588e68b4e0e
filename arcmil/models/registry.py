"""A tiny model registry: ``@register(name, ConfigClass, **preset)`` and ``build_model(name, **cfg)``."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from torch import nn

from arcmil.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_cls: type
    config_cls: type
    preset: dict


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, config_cls: type, **preset):
    """Register a model class under ``name``; ``preset`` fixes config values for a named variant."""

    def decorator(model_cls):
        _REGISTRY[name] = ModelEntry(name, model_cls, config_cls, preset)
        return model_cls

    return decorator


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
            base = [e.name for e in _REGISTRY.values() if e.model_cls is entry.model_cls and not e.preset]
            raise ConfigError(f"{name} is defined by {key}={value!r}; {key}={overrides[key]!r} contradicts it"
                              + (f" (use model {base[0]!r} to choose {key})" if base else ""))
    return entry.config_cls(**{**entry.preset, **overrides})


def build_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; unknown names and keys raise ConfigError listing the valid ones."""
    return get_entry(name).model_cls(make_config(name, **overrides))
