"""TransformerMIL: windows interact through self-attention, then an attention (or top-k) pool."""
from __future__ import annotations

import copy

import torch
from torch import nn

from arcmil.models.config import TransformerMILConfig
from arcmil.models.layers import (
    EncoderLayer,
    PositionalEncoding,
    TopKPooler,
    attention_head,
    full_mask,
    squeeze_single,
    xavier_init,
    zero_padding,
)


class TransformerMIL(nn.Module):
    """Linear(D->d) + positions -> pre-norm encoder layers -> LayerNorm -> attention pooler -> Linear(d->K).

    ``weights`` are the pooler's attention (pool='attention'; (B, K, N) with ``class_attention``) or 1/k on
    the top-k windows.
    """

    def __init__(self, config: TransformerMILConfig = TransformerMILConfig()):
        super().__init__()
        self.config = c = config
        self.proj = nn.Linear(c.input_dim, c.d_model)
        self.pos = PositionalEncoding(c.pos_enc, c.d_model, c.max_len, c.dropout_p, c.pos_scale, c.pos_scale_by)
        # the note's nn.TransformerEncoderLayer(norm_first=True) (ReLU), with linear-memory attention
        layer = EncoderLayer(c.d_model, c.nhead, c.dim_feedforward, c.dropout_p, activation="relu",
                             attention=c.attention, num_landmarks=c.num_landmarks)
        # like nn.TransformerEncoder, every layer starts from the same (deep-copied) initial weights
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(c.num_layers))
        # pre-norm layers leave the residual stream unnormalised: close with a LayerNorm
        self.norm = nn.LayerNorm(c.d_model)
        if c.pool == "topk":
            self.topk = TopKPooler(c.d_model, c.k, c.n_outputs)
        else:
            self.pooler, self.classifier = attention_head(c.d_model, c.pooler_hidden, c.n_outputs,
                                                          c.class_attention, dropout_p=c.dropout_p)
        if c.init == "xavier":
            xavier_init(self.proj, self.topk.score if c.pool == "topk" else self.classifier)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits (B,) (or (B, K) for K outputs), weights (B, N)
        (or (B, K, N) with ``class_attention``)."""
        mask = full_mask(x) if mask is None else mask
        h = self.pos(self.proj(zero_padding(x, mask)), mask)  # (B, N, d)
        for layer in self.layers:
            h, _ = layer(h, mask)
        h = self.norm(h)
        if self.config.pool == "topk":
            return self.topk(h, mask)
        z, weights = self.pooler(h, mask)
        return squeeze_single(self.classifier(z)), weights
