"""Self-attention for the Transformer models, with memory linear in the number of windows.

Shapes: B bags, H heads, T tokens (padded), e = d_model / H; key_mask (B, T) bool, True = real token.
Neither option ever materialises a (T, T) matrix:

- ``ExactAttention``: softmax attention through fused ``scaled_dot_product_attention``. PyTorch's
  fused CPU kernel has no attention dropout, so in training with dropout on long sequences the
  queries are processed in chunks whose scores are recomputed in the backward pass
  (activation checkpointing): the same function, O(chunk x T) memory.
- ``NystromAttention``: the Nystrom approximation used by the original TransMIL (Xiong et al. 2021):
  m landmarks (segment means of each bag's real tokens), O(T m) time and memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 2**24  # scores held at once by the chunked path (64 MB in float32)
CHUNK_FROM_TOKENS = 1024  # shorter sequences take the (T, T) math path, which is faster there


class _Flag:
    """Set by ``arcmil.export`` while it traces a model (``with ONNX_EXPORT: ...``): a plain flag read
    at trace time, where ``torch.compiler.is_exporting()`` exists only from torch 2.7 and also held
    inside ``torch.compile`` in some versions."""

    active = False

    def __enter__(self):
        self.active = True

    def __exit__(self, *exc):
        self.active = False


ONNX_EXPORT = _Flag()


def _softmax_attention(q, k, v, key_mask, dropout_p: float) -> torch.Tensor:
    """Plain softmax attention of a block of queries q (B, H, t, e) over all keys (B, H, T, e)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~key_mask[:, None, None, :], float("-inf")), dim=-1)
    return F.dropout(probs, dropout_p) @ v


class ExactAttention(nn.Module):
    """Exact softmax attention; forward(q, k, v (B, H, T, e), key_mask (B, T)) -> (B, H, T, e)."""

    def __init__(self, dropout_p: float):
        super().__init__()
        self.dropout_p = dropout_p

    def forward(self, q, k, v, key_mask):
        dropout_p = self.dropout_p if self.training else 0.0
        t = q.shape[2]
        if dropout_p == 0.0 or q.device.type != "cpu" or t < CHUNK_FROM_TOKENS:
            mask = key_mask[:, None, None, :]
            if ONNX_EXPORT.active:  # ONNX's fused Attention wants one mask row per query: (B, 1, T, T)
                mask = mask.expand(-1, -1, t, -1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        chunk = max(1, CHUNK_ELEMENTS // (q.shape[0] * q.shape[1] * t))
        # checkpoint() replays the RNG state, so the recomputed dropout mask equals the forward one
        return torch.cat([checkpoint(_softmax_attention, q[:, :, s:s + chunk], k, v, key_mask, dropout_p,
                                     use_reentrant=False) for s in range(0, t, chunk)], dim=2)


def _pinv(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose inverse of each (m, m) matrix by the Newton-Schulz-type iteration of Xiong et al."""
    abs_x = x.abs()
    scale = abs_x.sum(-1).amax(-1) * abs_x.sum(-2).amax(-1)  # (B, H)
    z = x.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Nystrom softmax attention with a depthwise convolution residual on the values (as TransMIL).

    Landmarks are means of ``num_landmarks`` equal segments of each bag's real tokens, taken in order
    of rank among the real tokens (padding anywhere, holes included, never enters a landmark). A bag
    no longer than ``num_landmarks`` gets one landmark per token: there the Nystrom product
    A A^+ A V equals A V, which is computed directly (the 6-step pseudo-inverse of TransMIL would
    leave an error of ~1e-2). Absent landmarks are masked out of every softmax.
    """

    def __init__(self, nhead: int, num_landmarks: int, dropout_p: float, pinv_iterations: int = 6,
                 conv_kernel: int = 33):
        super().__init__()
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        self.dropout = nn.Dropout(dropout_p)
        self.residual = nn.Conv2d(nhead, nhead, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=nhead,
                                  bias=False)

    def forward(self, q, k, v, key_mask):
        b, h, t, e = q.shape
        m = self.num_landmarks
        q = q / math.sqrt(e)
        lengths = key_mask.sum(dim=1, keepdim=True)  # (B, 1)
        rank = key_mask.cumsum(dim=1) - 1  # (B, T): a real token's position among the real tokens
        segment = rank * m // lengths.clamp(min=1)  # (B, T), in [0, m) on real tokens
        segment = torch.where(key_mask, segment, m)  # padding goes to an extra segment, dropped below
        member = F.one_hot(segment, m + 1)[..., :m].to(q.dtype)  # (B, T, m)
        counts = member.sum(dim=1)  # (B, m)
        present = counts > 0
        q_land = torch.einsum("bhte,btm->bhme", q, member) / counts.clamp(min=1)[:, None, :, None]
        k_land = torch.einsum("bhte,btm->bhme", k, member) / counts.clamp(min=1)[:, None, :, None]
        landmark_mask = present[:, None, None, :]
        kernel_1 = torch.softmax((q @ k_land.transpose(-1, -2)).masked_fill(~landmark_mask, float("-inf")), -1)
        kernel_1 = self.dropout(kernel_1)
        v = v * key_mask[:, None, :, None]
        # one token per landmark: kernel_1 is the exact attention over the tokens in landmark order
        out = kernel_1 @ torch.einsum("bhte,btm->bhme", v, member)
        short = lengths <= m  # (B, 1)
        residual = _over_real_tokens(self.residual, v, key_mask, rank, lengths)
        if _data_dependent_branch_allowed() and bool(short.all()):
            return out + residual  # the pseudo-inverse would cost ~10x the rest of the model
        kernel_2 = torch.softmax((q_land @ k_land.transpose(-1, -2)).masked_fill(~landmark_mask, float("-inf")), -1)
        # an absent landmark's row becomes the identity row: the matrix stays block-diagonal, so its
        # pseudo-inverse (and the output) ignores that landmark
        eye = torch.eye(m, dtype=q.dtype, device=q.device)
        kernel_2 = torch.where(present[:, None, :, None], kernel_2, eye)
        kernel_3 = torch.softmax((q_land @ k.transpose(-1, -2)).masked_fill(~key_mask[:, None, None, :],
                                                                           float("-inf")), -1)
        approximate = kernel_1 @ (_pinv(kernel_2, self.pinv_iterations) @ (self.dropout(kernel_3) @ v))
        return torch.where(short[:, :, None, None], out, approximate) + residual


def _over_real_tokens(conv: nn.Module, v: torch.Tensor, key_mask: torch.Tensor, rank: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
    """``conv`` along the token axis of v (B, H, T, e) with each bag's real tokens packed together in
    order and its padding moved past them: a real token's neighbours are real tokens (or the conv's
    zero padding), wherever the bag's padding sat. ``rank`` (B, T): a real token's place among the
    real ones; ``lengths`` (B, 1): real tokens per bag. Returned in v's token order."""
    pad_rank = (~key_mask).cumsum(dim=1) - 1  # among the padding
    packed_at = torch.where(key_mask, rank, lengths + pad_rank)  # (B, T), a permutation
    index = packed_at[:, None, :, None].expand_as(v)
    return conv(torch.zeros_like(v).scatter(2, index, v)).gather(2, index)


def _data_dependent_branch_allowed() -> bool:
    """Eager mode only: a graph traced for export or compilation must keep both paths."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def make_attention(kind: str, nhead: int, dropout_p: float, num_landmarks: int) -> nn.Module:
    if kind == "nystrom":
        return NystromAttention(nhead, num_landmarks, dropout_p)
    return ExactAttention(dropout_p)


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """The exact softmax attention of query 0 (the CLS token) over all tokens, averaged over heads:
    q, k (B, H, T, e) -> (B, T). Computed on its own, so no (T, T) map exists."""
    scores = (q[:, :, :1] @ k.transpose(-2, -1)).squeeze(2) / math.sqrt(q.shape[-1])  # (B, H, T)
    return torch.softmax(scores.masked_fill(~key_mask[:, None, :], float("-inf")), dim=-1).mean(dim=1)
