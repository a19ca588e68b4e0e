"""The Fisher-vector encoding of a bag (Perronnin et al. 2010; miFV, Wei et al. 2017, for MIL).

A diagonal Gaussian mixture of C components fitted on the training windows describes where windows
fall; a bag is encoded by the mean gradient of its windows' log-likelihood with respect to the
mixture's means and standard deviations (2 C D features), then power- (signed square root, smoothed
near 0: see POWER_SMOOTHING) and L2-normalised. All sums over windows are taken as products of
(B, N, C) posteriors with (B, N, D) windows, so no (B, N, C, D) tensor is formed.
"""
from __future__ import annotations

import math

import torch

# sign(g) (sqrt(|g| + s) - sqrt(s)): the signed square root, continuous through 0 with a slope of at most
# 1 / (2 sqrt(s)) there, so that integrated gradients along a path that crosses 0 stay accurate
POWER_SMOOTHING = 1e-3
NORM_FLOOR = 1e-12  # a bag whose encoding is 0 everywhere stays 0 under the L2 normalisation


def posteriors(x: torch.Tensor, mask: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor,
               variances: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), mask (B, N) -> (B, N, C) each window's component posteriors, 0 on padding."""
    precision = 1.0 / variances  # (C, D)
    squared = ((x * x) @ precision.T - 2 * x @ (means * precision).T
               + (means * means * precision).sum(-1))  # (B, N, C): Mahalanobis distance to each component
    log_norm = -0.5 * (torch.log(2 * math.pi * variances).sum(-1))  # (C,)
    gamma = torch.softmax(log_weights + log_norm - 0.5 * squared, dim=-1)
    return gamma * mask.unsqueeze(-1)


def fisher_vector(x: torch.Tensor, mask: torch.Tensor, log_weights: torch.Tensor, means: torch.Tensor,
                  variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, N, D), mask (B, N) and a mixture (log_weights (C,), means and variances (C, D)) ->
    (features (B, 2 C D), normalised; raw (B, 2 C D), the gradients before normalisation, each a sum
    over windows divided by the bag's size; gamma (B, N, C), the posteriors)."""
    gamma = posteriors(x, mask, log_weights, means, variances)
    count = mask.sum(dim=1).clamp(min=1).to(x.dtype)[:, None, None]  # (B, 1, 1)
    s0 = gamma.sum(dim=1).unsqueeze(-1)  # (B, C, 1)
    s1 = gamma.transpose(1, 2) @ x  # (B, C, D)
    s2 = gamma.transpose(1, 2) @ (x * x)
    std, weights = variances.sqrt(), log_weights.exp()[:, None]  # (C, D), (C, 1)
    d_mean = (s1 - s0 * means) / std / (count * weights.sqrt())
    d_std = ((s2 - 2 * s1 * means + s0 * means * means) / variances - s0) / (count * (2 * weights).sqrt())
    raw = torch.cat([d_mean, d_std], dim=1).flatten(1)  # (B, 2 C D)
    power = torch.sign(raw) * ((raw.abs() + POWER_SMOOTHING).sqrt() - POWER_SMOOTHING ** 0.5)
    return power / power.norm(dim=1, keepdim=True).clamp(min=NORM_FLOOR), raw, gamma


def window_contributions(x: torch.Tensor, gamma: torch.Tensor, direction: torch.Tensor, means: torch.Tensor,
                         variances: torch.Tensor, log_weights: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Each window's term in ``direction`` (B, 2 C D) · raw Fisher vector: x (B, N, D), gamma (B, N, C),
    count (B,) real windows -> (B, N). The raw vector is a sum of per-window terms, so these add up to
    ``direction · raw`` exactly."""
    c, d = means.shape
    along_mean, along_std = direction.view(-1, 2, c, d).unbind(1)  # (B, C, D) each
    std, weights = variances.sqrt(), log_weights.exp()  # (C, D), (C,)
    a = along_mean / std / weights.sqrt()[:, None]  # (B, C, D): per-window term (x - mu) . a
    b = along_std / variances / (2 * weights).sqrt()[:, None]  # (x - mu)^2 . b - sum(direction's std part)
    per_component = (torch.einsum("bnd,bcd->bnc", x, a) - (a * means).sum(-1).unsqueeze(1)
                     + torch.einsum("bnd,bcd->bnc", x * x, b) - 2 * torch.einsum("bnd,bcd->bnc", x, b * means)
                     + (b * means * means).sum(-1).unsqueeze(1)
                     - (along_std / (2 * weights).sqrt()[:, None]).sum(-1).unsqueeze(1))  # (B, N, C)
    return (gamma * per_component).sum(-1) / count.to(x.dtype).clamp(min=1)[:, None]
