"""TransMIL as the design note defines it: a CLS-token Transformer over the windows.

(Shao et al., NeurIPS 2021, use Nyström attention and a convolutional position generator; the
note's model is the simpler CLS-token Transformer, kept here, with Nyström attention as the option
``attention='nystrom'``.)
"""
from __future__ import annotations

import torch
from torch import nn

from arcmil.models.config import TransMILConfig
from arcmil.models.layers import (
    AttentionPooler,
    EncoderLayer,
    Float32Linear,
    PositionalEncoding,
    full_mask,
    squeeze_single,
    xavier_init,
    zero_padding,
)


class TransMIL(nn.Module):
    """[CLS] + windows -> pre-norm encoder layers -> LayerNorm -> logits from the CLS output.

    ``weights``: the last layer's CLS->window attention averaged over heads, renormalised over the
    windows (divided by its window mass, which drops the CLS's attention to itself; no second
    softmax). With ``dual=True`` the CLS output is concatenated with an attention-pooled bag vector
    (DSMIL-like) and ``weights`` is the mean of the two streams' attentions.
    """

    def __init__(self, config: TransMILConfig = TransMILConfig()):
        super().__init__()
        self.config = c = config
        self.proj = nn.Linear(c.input_dim, c.d_model)
        self.pos = PositionalEncoding(c.pos_enc, c.d_model, c.max_len, c.dropout_p, c.pos_scale, c.pos_scale_by)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.nhead, c.dim_feedforward, c.dropout_p, attention=c.attention,
                         num_landmarks=c.num_landmarks) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.pooler = AttentionPooler(c.d_model, hidden=c.pooler_hidden, dropout_p=c.dropout_p) if c.dual else None
        self.classifier = Float32Linear(c.d_model * (2 if c.dual else 1), c.n_outputs)
        if c.init == "xavier":
            xavier_init(self.proj, self.classifier)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits (B,) (or (B, K) for K outputs), weights (B, N)."""
        mask = full_mask(x) if mask is None else mask
        b = x.shape[0]
        windows = self.pos(self.proj(zero_padding(x, mask)), mask)  # (B, N, d)
        h = torch.cat([self.cls_token.expand(b, -1, -1), windows], dim=1)  # (B, T, d)
        key_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # (B, T)
        for i, layer in enumerate(self.layers):
            h, cls_attention = layer(h, key_mask, return_cls_attention=i == len(self.layers) - 1)
        h = self.norm(h)
        to_windows = cls_attention[:, 1:].float()  # weights and head in float32 (see Float32Linear)
        weights = to_windows / to_windows.sum(dim=1, keepdim=True)
        bag = h[:, 0].float()
        if self.pooler is not None:
            z, pool_weights = self.pooler(h[:, 1:], mask)
            bag = torch.cat([bag, z], dim=-1)
            weights = (weights + pool_weights) / 2
        return squeeze_single(self.classifier(bag)), weights
