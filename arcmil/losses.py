"""Losses beyond PyTorch's own (chosen by arcmil.labels.LabelSpace.criterion)."""
from __future__ import annotations

import torch
from torch import nn


class ClassWeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class ``weight`` (K,); targets arrive as the float class ids (B,) that
    batches carry for every label kind."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, K), target (B,) -> the weighted mean loss."""
        return nn.functional.cross_entropy(logits, target.long(), weight=self.weight)
