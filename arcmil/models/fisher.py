"""The Fisher-vector encoding of a bag (Perronnin et al. 2010; miFV, Wei et al. 2017, for MIL).

A diagonal Gaussian mixture of C components fitted on the training windows describes where windows
fall; a bag is encoded by the mean gradient of its windows' log-likelihood with respect to the
mixture's means and standard deviations (2 C D features), then power- (signed square root, smoothed
near 0: see POWER_SMOOTHING) and L2-normalised. Components are taken one at a time, so no
(B, N, C, D) tensor is formed.
"""
from __future__ import annotations

import math

import torch

# sign(g) (sqrt(|g| + s) - sqrt(s)): the signed square root, continuous through 0 with a slope of at most
# 1 / (2 sqrt(s)) there, so that integrated gradients along a path that crosses 0 stay accurate
POWER_SMOOTHING = 1e-3
NORM_FLOOR = 1e-12  # a bag whose encoding is 0 everywhere stays 0 under the L2 normalisation


def _standardised(x: torch.Tensor, means: torch.Tensor, variances: torch.Tensor):
    """(x - mean_c) / std_c, (B, N, D), for each component c in turn: computed directly (no expanded square
    loses precision when the means are far from 0), and never all C at once."""
    for mean, std in zip(means, variances.sqrt()):
        yield (x - mean) / std


def _normalisers(log_weights: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) each: 1 / (N sqrt(w_c)) and 1 / (N sqrt(2 w_c)), the mean and std gradients' factors."""
    weights, n = log_weights.exp(), count.clamp(min=1).unsqueeze(-1)  # (C,), (B, 1)
    return 1.0 / (n * weights.sqrt()), 1.0 / (n * (2 * weights).sqrt())


def posteriors(x: torch.Tensor, mask: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor,
               variances: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), mask (B, N) -> (B, N, C) each window's component posteriors, 0 on padding."""
    squared = torch.stack([u.square().sum(-1) for u in _standardised(x, means, variances)], dim=-1)  # (B, N, C)
    log_norm = -0.5 * torch.log(2 * math.pi * variances).sum(-1)  # (C,)
    gamma = torch.softmax(log_weights + log_norm - 0.5 * squared, dim=-1)
    return gamma * mask.unsqueeze(-1)


def fisher_vector(x: torch.Tensor, mask: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor,
                  variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N, D) with 0 on padding, mask (B, N) and a mixture (log_weights (C,), means and variances
    (C, D)) -> (features (B, 2 C D), normalised; raw (B, 2 C D), the gradients before normalisation, each
    a sum of per-window terms (``window_contributions``); gamma (B, N, C), the posteriors)."""
    gamma = posteriors(x, mask, log_weights, means, variances)
    by_mean, by_std = _normalisers(log_weights, mask.sum(dim=1).to(x.dtype))
    d_mean, d_std = [], []
    for c, u in enumerate(_standardised(x, means, variances)):
        g = gamma[..., c].unsqueeze(-1)  # (B, N, 1)
        d_mean.append((g * u).sum(dim=1) * by_mean[:, c, None])  # (B, D)
        d_std.append((g * (u * u - 1)).sum(dim=1) * by_std[:, c, None])
    raw = torch.cat([torch.stack(d_mean, dim=1), torch.stack(d_std, dim=1)], dim=1).flatten(1)  # (B, 2 C D)
    power = torch.sign(raw) * ((raw.abs() + POWER_SMOOTHING).sqrt() - POWER_SMOOTHING ** 0.5)
    return power / power.norm(dim=1, keepdim=True).clamp(min=NORM_FLOOR), raw, gamma


def window_contributions(x: torch.Tensor, mask: torch.Tensor, gamma: torch.Tensor, direction: torch.Tensor,
                         log_weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """Each window's term of ``direction`` (B, 2 C D) · raw Fisher vector (``fisher_vector``'s x, mask and
    gamma) -> (B, N), 0 on padding; they add up to ``direction · raw`` exactly."""
    c, d = means.shape
    along_mean, along_std = direction.view(-1, 2, c, d).unbind(1)  # (B, C, D) each
    by_mean, by_std = _normalisers(log_weights, mask.sum(dim=1).to(x.dtype))
    terms = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
    for k, u in enumerate(_standardised(x, means, variances)):
        per_window = ((u * along_mean[:, None, k]).sum(-1) * by_mean[:, k, None]
                      + ((u * u - 1) * along_std[:, None, k]).sum(-1) * by_std[:, k, None])  # (B, N)
        terms = terms + gamma[..., k] * per_window
    return terms
