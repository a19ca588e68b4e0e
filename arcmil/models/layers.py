"""Blocks shared by the models: masked softmax, positional encodings, poolers, an encoder layer.

Shapes: B bags, N windows (padded), D input features, d model width, H heads, T = N + 1 tokens.
Masks are bool with True = real window.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from arcmil.errors import ConfigError
from arcmil.models.attention import cls_attention_row, make_attention


def xavier_init(*linears: nn.Linear) -> None:
    """The note's initialisation of a Transformer's input projection and output head: Xavier-uniform
    weights, zero biases (twice PyTorch's default scale for a 256 -> 128 projection)."""
    for linear in linears:
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)


def full_mask(x: torch.Tensor) -> torch.Tensor:
    """All-True mask (B, N) for an unpadded batch x (B, N, ...)."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) with padding set to 0: padding may hold anything (NaN included), and in an encoder
    0 x NaN in the attention products would spread it to every real window."""
    return torch.where(mask.unsqueeze(-1), x, 0.0)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where padding gets exactly 0. scores, mask: (B, N)."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def sinusoidal_table(n: int, d: int, device=None) -> torch.Tensor:
    """(n, d) sin/cos table of Vaswani et al. 2017, computed for any length n."""
    position = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d // 2])
    return table


def window_positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) long: each real window's position counted from its bag's first real window (padding: 0),
    so that padding on the left, on the right or in between moves no window's position."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def check_position_table(pos_enc: str | None, max_len: int, n_windows: int) -> None:
    """Refuse ``n_windows`` beyond a learned position table of ``max_len`` rows."""
    if pos_enc == "learned" and n_windows > max_len:
        raise ConfigError(f"a bag of {n_windows} windows exceeds the learned positional table (max_len="
                          f"{max_len}); train with a larger max_len or pos_enc='sin'")


class PositionalEncoding(nn.Module):
    """Adds window-order information: 'sin' (any length), 'learned' (up to max_len), or 'none'.
    forward(h (B, N, d), mask (B, N)) -> (B, N, d).

    The sinusoidal table (RMS 1/sqrt(2) per entry) is multiplied by ``scale`` (``scale_by='constant'``)
    or by ``scale`` times the bag's RMS of real windows over the table's RMS (``'content'``): then
    ``scale`` is the position-to-content ratio, whatever the norm of the inputs or the training step.
    """

    def __init__(self, kind: str, d_model: int, max_len: int, dropout_p: float, scale: float = 1.0,
                 scale_by: str = "constant"):
        super().__init__()
        self.kind, self.max_len, self.scale, self.scale_by = kind, max_len, scale, scale_by
        self.table = nn.Embedding(max_len, d_model) if kind == "learned" else None
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=0.02)
        self.dropout = nn.Dropout(dropout_p)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = h.shape[1]
        if self.kind == "sin":
            table = sinusoidal_table(n, h.shape[2], h.device).to(h.dtype)
            h = h + self._sin_scale(h, mask) * table[window_positions(mask)]
        elif self.kind == "learned":
            check_position_table(self.kind, self.max_len, n)
            h = h + self.table(window_positions(mask))
        return self.dropout(h)

    def _sin_scale(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | float:
        """``scale``, or (B, 1, 1): scale x RMS of each bag's real windows / RMS of the table. In training
        the RMS is detached (it sets the table's size and is not a path for gradients: docs/recipe.md
        measured it so); in evaluation it is not, so that gradients are the model's own and integrated
        gradients stay complete (the values are the same either way)."""
        if self.scale_by == "constant":
            return self.scale
        real = mask.unsqueeze(-1).to(h.dtype)  # (B, N, 1)
        size = h.detach() if self.training else h
        mean_square = (size.square() * real).sum(dim=(1, 2)) / (real.sum(dim=(1, 2)) * h.shape[2]).clamp(min=1)
        return (self.scale * math.sqrt(2.0) * mean_square.sqrt()).view(-1, 1, 1)


def float32_forward(forward):
    """Run ``forward(x, *rest)`` in float32 with autocast off, for pooling and classification heads:
    window weights and bag logits are never bf16-rounded, and float32 LayerNorm outputs never meet
    bf16 scores."""

    @functools.wraps(forward)
    def wrapper(self, x: torch.Tensor, *rest):
        with torch.autocast(x.device.type, enabled=False):
            return forward(self, x.float(), *rest)

    return wrapper


class Float32Linear(nn.Linear):
    """The classification head: an ``nn.Linear`` (same parameters, same state_dict) that computes in
    float32 under autocast (see ``float32_forward``)."""

    forward = float32_forward(nn.Linear.forward)


class AttentionPooler(nn.Module):
    """ABMIL attention pooling (Ilse et al. 2018, eq. 8; gated: eq. 9), with one attention over the
    windows (``branches`` 1) or one per output (``branches`` K: CLAM's multi-branch attention, Lu et al.
    2021, a shared hidden layer and one score per class).

    forward(h (B, N, d), mask (B, N)) -> (z (B, d), weights (B, N)), or for K branches (z (B, K, d),
    weights (B, K, N)); weights sum to 1 over real windows and are exactly 0 on padding.
    """

    def __init__(self, d_model: int, hidden: int = 128, dropout_p: float = 0.0, gated: bool = False,
                 branches: int = 1):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.V = nn.Linear(d_model, hidden)
        self.U = nn.Linear(d_model, hidden) if gated else None
        self.w = nn.Linear(hidden, branches)

    @float32_forward
    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.tanh(self.V(self.dropout(h)))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(self.dropout(h)))
        scores = self.w(a)  # (B, N, branches)
        if scores.shape[-1] == 1:
            weights = masked_softmax(scores.squeeze(-1), mask)
            # where() rather than multiply so that non-finite padding values cannot leak into z
            return torch.where(mask.unsqueeze(-1), weights.unsqueeze(-1) * h, 0.0).sum(dim=1), weights
        weights = masked_softmax(scores.transpose(1, 2), mask.unsqueeze(1))  # (B, K, N)
        return torch.einsum("bkn,bnd->bkd", weights, zero_padding(h, mask)), weights


class BranchLinear(nn.Module):
    """The head of a K-branch pooler: K linear maps, the k-th reading bag vector k only, in float32
    (``Float32Linear``'s reason). forward(z (B, K, d)) -> logits (B, K)."""

    def __init__(self, d_model: int, branches: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(branches, d_model))
        self.bias = nn.Parameter(torch.empty(branches))
        bound = 1.0 / math.sqrt(d_model)  # nn.Linear's default initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    @float32_forward
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z * self.weight).sum(dim=-1) + self.bias


def attention_head(d_model: int, hidden: int, n_outputs: int, per_class: bool, dropout_p: float = 0.0,
                   gated: bool = False) -> tuple[AttentionPooler, nn.Module]:
    """The pooler and classifier of an attention model: one shared attention and a Linear(d -> K), or
    (``per_class``, K > 1) one attention and one linear map per output."""
    branches = n_outputs if per_class else 1
    pooler = AttentionPooler(d_model, hidden=hidden, dropout_p=dropout_p, gated=gated, branches=branches)
    return pooler, BranchLinear(d_model, branches) if branches > 1 else Float32Linear(d_model, n_outputs)


class TopKPooler(nn.Module):
    """Bag logit = mean of the k highest window scores (k clipped to the bag's length), per output.

    forward(h (B, N, d), mask (B, N)) -> (logits (B,) or (B, K) for ``n_outputs`` K > 1, weights (B, N));
    weights are 1/k on the selected windows and 0 elsewhere, averaged over the K outputs.
    """

    def __init__(self, d_model: int, k: int, n_outputs: int = 1):
        super().__init__()
        self.k = k
        self.score = nn.Linear(d_model, n_outputs)

    @float32_forward
    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(h).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, N, K)
        k = min(self.k, h.shape[1])
        top, index = scores.topk(k, dim=1)  # (B, k, K), descending
        k_bag = mask.sum(dim=1).clamp(max=k)  # (B,) windows actually averaged per bag
        chosen = (torch.arange(k, device=h.device).unsqueeze(0) < k_bag.unsqueeze(1)).unsqueeze(-1)  # (B, k, 1)
        logits = torch.where(chosen, top, 0.0).sum(dim=1) / k_bag.unsqueeze(1)  # (B, K)
        share = (chosen.to(h.dtype) / k_bag.view(-1, 1, 1).to(h.dtype)).expand_as(top)
        weights = torch.zeros_like(scores).scatter(1, index, share).mean(dim=-1)
        return squeeze_single(logits), weights


def squeeze_single(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) -> (B,): a binary model's one logit per bag; (B, K) unchanged."""
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


class EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer that can also return its CLS attention row.

    ``attention``: 'full' (exact softmax) or 'nystrom' (see arcmil.models.attention); neither
    materialises a (T, T) map, and the CLS row (query 0) is computed only when asked for.
    ``activation``: 'relu' (nn.TransformerEncoderLayer's default, the note's TransformerMIL) or 'gelu'.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout_p: float, *,
                 activation: str = "gelu", attention: str = "full", num_landmarks: int = 64):
        super().__init__()
        self.nhead = nhead
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attention = make_attention(attention, nhead, dropout_p, num_landmarks)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.GELU() if activation == "gelu" else nn.ReLU(),
                                nn.Dropout(dropout_p), nn.Linear(dim_feedforward, d_model))
        self.dropout = nn.Dropout(dropout_p)
        # nn.MultiheadAttention's initialisation: Xavier-uniform input projection, zero biases
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, key_mask: torch.Tensor, return_cls_attention: bool = False):
        """h: (B, T, d); key_mask: (B, T). Returns (h (B, T, d), cls_attention (B, T) or None),
        cls_attention being the exact softmax row of query 0, averaged over heads."""
        b, t, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.nhead, d // self.nhead).permute(2, 0, 3, 1, 4)
        attn = self.attention(q, k, v, key_mask)  # (B, H, T, e)
        h = h + self.dropout(self.out(attn.transpose(1, 2).reshape(b, t, d)))
        h = h + self.dropout(self.ff(self.norm2(h)))
        return h, cls_attention_row(q, k, key_mask) if return_cls_attention else None
