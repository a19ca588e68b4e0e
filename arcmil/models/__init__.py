"""Bag classifiers. Every model: ``forward(x (B, N, D), mask (B, N) = None) -> (logits (B,), weights (B, N))``."""
from arcmil.models.attention_mil import AttentionMIL
from arcmil.models.config import AttentionMILConfig, InstanceMaxConfig, TransformerMILConfig, TransMILConfig
from arcmil.models.instance_max import InstanceMax
from arcmil.models.registry import build_model, get_entry, make_config, model_names, register
from arcmil.models.transformer_mil import TransformerMIL
from arcmil.models.transmil import TransMIL

__all__ = ["AttentionMIL", "AttentionMILConfig", "InstanceMax", "InstanceMaxConfig", "TransMIL", "TransMILConfig",
           "TransformerMIL", "TransformerMILConfig", "build_model", "get_entry", "make_config", "model_names",
           "register"]
