"""AttentionMIL: the ABMIL baseline (Ilse, Tomczak, Welling, ICML 2018)."""
from __future__ import annotations

import torch
from torch import nn

from arcmil.models.config import AttentionMILConfig
from arcmil.models.layers import attention_head, full_mask, squeeze_single


class AttentionMIL(nn.Module):
    """Window MLP -> (gated) attention pooling -> linear classifier. Permutation invariant.
    ``class_attention``: one attention (and bag vector) per class, weights (B, K, N)."""

    def __init__(self, config: AttentionMILConfig = AttentionMILConfig()):
        super().__init__()
        self.config = c = config
        self.embed = nn.Sequential(nn.Linear(c.input_dim, c.hidden_dim), nn.ReLU(), nn.Dropout(c.dropout_p))
        self.pooler, self.classifier = attention_head(c.hidden_dim, c.hidden_dim, c.n_outputs, c.class_attention,
                                                      gated=c.gated)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits (B,) (or (B, K) for K outputs), weights (B, N)
        (or (B, K, N) with ``class_attention``)."""
        mask = full_mask(x) if mask is None else mask
        z, weights = self.pooler(self.embed(x), mask)
        return squeeze_single(self.classifier(z)), weights
