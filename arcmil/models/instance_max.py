"""InstanceMax: score every window, take the maximum (mi-Net style, Wang et al. 2018).

A positive bag needs one positive window and nothing in a bag can argue for "negative": the
standard MIL assumption built in, which makes it the reference for the MIL-assumption tests.
"""
from __future__ import annotations

import torch
from torch import nn

from arcmil.models.config import InstanceMaxConfig
from arcmil.models.layers import TopKPooler, full_mask


class InstanceMax(nn.Module):
    """Window MLP -> window score -> bag logit = max score. ``weights`` is 1 on the arg-max window."""

    def __init__(self, config: InstanceMaxConfig = InstanceMaxConfig()):
        super().__init__()
        self.config = c = config
        self.embed = nn.Sequential(nn.Linear(c.input_dim, c.hidden_dim), nn.ReLU(), nn.Dropout(c.dropout_p))
        self.max_pool = TopKPooler(c.hidden_dim, k=1, n_outputs=c.n_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits (B,) (or (B, K) for K outputs), weights (B, N)."""
        mask = full_mask(x) if mask is None else mask
        return self.max_pool(self.embed(x), mask)
