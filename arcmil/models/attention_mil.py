"""AttentionMIL: the ABMIL baseline (Ilse, Tomczak, Welling, ICML 2018)."""
from __future__ import annotations

import torch
from torch import nn

from arcmil.models.config import AttentionMILConfig
from arcmil.models.layers import AttentionPooler, Float32Linear, full_mask, squeeze_single


class AttentionMIL(nn.Module):
    """Window MLP -> (gated) attention pooling -> linear classifier. Permutation invariant."""

    def __init__(self, config: AttentionMILConfig = AttentionMILConfig()):
        super().__init__()
        self.config = c = config
        self.embed = nn.Sequential(nn.Linear(c.input_dim, c.hidden_dim), nn.ReLU(), nn.Dropout(c.dropout_p))
        self.pooler = AttentionPooler(c.hidden_dim, hidden=c.hidden_dim, gated=c.gated)
        self.classifier = Float32Linear(c.hidden_dim, c.n_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits (B,) (or (B, K) for K outputs), weights (B, N)."""
        mask = full_mask(x) if mask is None else mask
        z, weights = self.pooler(self.embed(x), mask)
        return squeeze_single(self.classifier(z)), weights
