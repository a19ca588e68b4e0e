"""Bag classifiers. Every model: ``forward(x (B, N, D), mask (B, N) = None) -> (logits (B,), weights (B, N))``.

The model classes are imported on first use (``arcmil.models.TransMIL``), not with the package: the
registry and the configs are torch-free."""
from arcmil.lazy import lazy_attributes
from arcmil.models.config import AttentionMILConfig, InstanceMaxConfig, TransformerMILConfig, TransMILConfig
from arcmil.models.registry import build_model, builtin_classes, get_entry, make_config, model_names, register

__getattr__, __dir__ = lazy_attributes(__name__, globals(), builtin_classes())

__all__ = ["AttentionMIL", "AttentionMILConfig", "InstanceMax", "InstanceMaxConfig", "TransMIL", "TransMILConfig",
           "TransformerMIL", "TransformerMILConfig", "build_model", "get_entry", "make_config", "model_names",
           "register"]
