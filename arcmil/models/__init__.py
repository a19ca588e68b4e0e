"""Bag classifiers. Every model: ``forward(x (B, N, D), mask (B, N) = None) -> (logits (B,), weights (B, N))``.

The model classes are imported on first use (``arcmil.models.TransMIL``), not with the package: the
registry and the configs are torch-free."""
import importlib

from arcmil.models.config import AttentionMILConfig, InstanceMaxConfig, TransformerMILConfig, TransMILConfig
from arcmil.models.registry import build_model, get_entry, make_config, model_names, register

_CLASSES = {"AttentionMIL": "attention_mil", "InstanceMax": "instance_max", "TransformerMIL": "transformer_mil",
            "TransMIL": "transmil"}


def __getattr__(name: str):
    """A model class (imported on first use, then cached) or a submodule (``arcmil.models.transmil``)."""
    target = f"{__name__}.{_CLASSES.get(name, name)}"
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name != target:
            raise
        raise AttributeError(f"module 'arcmil.models' has no attribute {name!r}") from None
    value = getattr(module, name) if name in _CLASSES else module
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_CLASSES})


__all__ = ["AttentionMIL", "AttentionMILConfig", "InstanceMax", "InstanceMaxConfig", "TransMIL", "TransMILConfig",
           "TransformerMIL", "TransformerMILConfig", "build_model", "get_entry", "make_config", "model_names",
           "register"]
