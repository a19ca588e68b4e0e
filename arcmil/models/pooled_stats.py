"""PooledStats: a classical bag model, a bag encoding and a scikit-learn classifier.

The published leaders on small MIL sets (MUSK, ELEPHANT) are bag-level encodings with kernel machines,
not deep models. This one encodes each bag as its windows' per-feature mean, max, min and standard
deviation (``stats``, F = 4 D features; the statistic kernel of Gärtner et al. 2002 with an RBF SVM) or
as their Fisher vector under a Gaussian mixture fitted on the training windows (``fisher``, F = 2 C D;
miFV's family, arcmil.models.fisher), standardises the encodings with the training bags' statistics
and fits a scikit-learn classifier: L2 logistic regression, or an RBF support vector machine
(one-vs-rest beyond binary), classes weighted by their balance as the neural losses are. The fitted
parameters live in buffers and the decision function is computed in torch, so the model scores,
explains (occlusion, integrated gradients), saves (no pickled estimator) and exports to ONNX like any
other.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from arcmil.errors import ArcmilError
from arcmil.models.config import PooledStatsConfig
from arcmil.models.fisher import fisher_vector, window_contributions
from arcmil.models.layers import float32_forward, full_mask

MIXTURE_MAX_WINDOWS = 100_000  # training windows the Gaussian mixture is fitted on at most (a seeded sample)
MIXTURE_REG_COVAR = 1e-3  # added to every variance (scikit-learn's reg_covar): no component collapses on a point


def pooled_features(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, D), mask (B, N) -> (features (B, 4 D): mean, max, min and std over each bag's real windows,
    selections (B, N): each window's share of the max and min picks, summing to 1 over a bag's windows)."""
    real = mask.unsqueeze(-1)
    count = real.sum(dim=1).clamp(min=1)  # (B, 1)
    x = torch.where(real, x, 0.0)
    mean = x.sum(dim=1) / count
    variance = (torch.where(real, x - mean.unsqueeze(1), 0.0) ** 2).sum(dim=1) / count
    std = variance.clamp(min=1e-12).sqrt()  # finite gradients where a feature is constant (a 1-window bag)
    high, top = torch.where(real, x, float("-inf")).max(dim=1)  # (B, D) values and window positions
    low, bottom = torch.where(real, x, float("inf")).min(dim=1)
    picks = torch.cat([top, bottom], dim=1)  # (B, 2 D)
    selections = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).scatter_add_(
        1, picks, torch.full(picks.shape, 1.0 / picks.shape[1], dtype=x.dtype, device=x.device))
    return torch.cat([mean, high, low, std], dim=1), selections


class PooledStats(nn.Module):
    """Bag encoding -> standardise -> linear (logistic) or RBF-kernel (svm) decision function.

    forward(x (B, N, D), mask (B, N)) -> (logits (B,) or (B, K), weights (B, N)). ``stats``: the weights
    are each window's share of the per-feature max and min picks (which windows set the pooled extremes);
    ``fisher``: each window's share of the decision, |its term| in the linear score over the sum of
    them (the Fisher vector is a sum of per-window terms; see ``_fisher_weights``)."""

    def __init__(self, config: PooledStatsConfig = PooledStatsConfig()):
        super().__init__()
        self.config = config
        if config.encoding == "fisher":  # its Gaussian mixture: log weights (C,), means and variances (C, D)
            c = config.n_components
            self.register_buffer("log_weights", torch.full((c,), -float(np.log(c))))
            self.register_buffer("means", torch.zeros(c, config.input_dim))
            self.register_buffer("variances", torch.ones(c, config.input_dim))
        self._make_buffers(config)

    def _make_buffers(self, c: PooledStatsConfig) -> None:
        """The classifier's buffers (sized by the fit: ``_set`` makes them again)."""
        f, k = c.n_features, c.n_outputs
        self.register_buffer("center", torch.zeros(f))
        self.register_buffer("scale", torch.ones(f))
        # logistic: coef (K, F); svm: support vectors (S, F) and dual coefficients (K, S), one row per output
        self.register_buffer("coef", torch.zeros(k, f if c.classifier == "logistic" else 0))
        self.register_buffer("support", torch.zeros(c.n_support, f))
        self.register_buffer("dual_coef", torch.zeros(k, c.n_support))
        self.register_buffer("intercept", torch.zeros(k))

    def _fisher(self, x: torch.Tensor, mask: torch.Tensor):
        """``fisher_vector`` of the bags under the fitted mixture, with x zeroed on padding (any padded value,
        NaN too, adds nothing): (x, features, raw, posteriors)."""
        x = torch.where(mask.unsqueeze(-1), x, 0.0)
        return x, *fisher_vector(x, mask, self.log_weights, self.means, self.variances)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), mask (B, N) -> each bag's encoding (B, F), before standardisation."""
        return self._fisher(x, mask)[1] if self.config.encoding == "fisher" else pooled_features(x, mask)[0]

    @float32_forward  # a fitted decision function: never bf16-rounded
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mask = full_mask(x) if mask is None else mask
        if self.config.encoding == "fisher":
            x, features, raw, posterior = self._fisher(x, mask)
        else:
            features, weights = pooled_features(x, mask)
        z = (features - self.center) / self.scale  # (B, F)
        if self.config.classifier == "logistic":
            logits = z @ self.coef.T + self.intercept
        else:
            gamma = self.config.gamma / z.shape[1]
            kernel = torch.exp(-gamma * torch.cdist(z, self.support).square())  # (B, S)
            logits = kernel @ self.dual_coef.T + self.intercept
        if self.config.encoding == "fisher":
            weights = self._fisher_weights(x, mask, features, raw, posterior)
        return (logits.squeeze(-1) if logits.shape[-1] == 1 else logits), weights

    def _fisher_weights(self, x, mask, features, raw, posterior) -> torch.Tensor:
        """(B, N) each window's share of the linear decision: the normalised Fisher vector is the raw one
        scaled per feature within the bag (f = r * raw), and raw is a sum of per-window terms, so each
        output's score minus its constant (intercept - coef . center / scale) splits exactly into
        per-window terms of coef / scale . r * raw (window_contributions); a window's weight is |its
        terms| summed over the outputs, over the bag's total (uniform where every term is 0). A term is
        the window's part of the bag's score, not the change from removing it (r depends on the bag)."""
        ratio = torch.where(raw != 0, features / torch.where(raw != 0, raw, 1.0), 0.0)  # (B, F)
        share = sum(window_contributions(x, mask, posterior, ratio * (coef / self.scale), self.log_weights,
                                         self.means, self.variances).abs() for coef in self.coef)
        total = share.sum(dim=1, keepdim=True)
        uniform = mask / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return torch.where(total > 0, share / total.clamp(min=torch.finfo(x.dtype).tiny), uniform)

    @torch.no_grad()
    def fit_bags(self, loader) -> None:
        """Fit on every bag of ``loader`` (a scoring loader over the training bags: normalised windows,
        labels): the mixture on their windows (fisher), then the classifier on their encodings, in bag
        order whatever the batching."""
        if self.config.encoding == "fisher":
            self.fit_mixture(sample_windows(loader, MIXTURE_MAX_WINDOWS))
        features, labels, order = [], [], []
        for batch in loader:
            features.append(self.encode(batch.x.float(), batch.mask).numpy())
            labels.append(batch.y.numpy())
            order.append(batch.index.numpy())
        rows = np.argsort(np.concatenate(order), kind="stable")
        self.fit_features(np.concatenate(features)[rows], np.concatenate(labels)[rows], loader.bs.label_space.kind)

    @torch.no_grad()
    def fit_mixture(self, windows: np.ndarray) -> None:
        """The fisher encoding's diagonal Gaussian mixture, fitted by scikit-learn on ``windows`` (W, D)."""
        from sklearn.mixture import GaussianMixture

        if len(windows) < self.config.n_components:
            raise ArcmilError(f"a mixture of {self.config.n_components} components needs at least as many "
                              f"training windows, got {len(windows)} (lower n_components)")
        mixture = GaussianMixture(self.config.n_components, covariance_type="diag", reg_covar=MIXTURE_REG_COVAR,
                                  random_state=0).fit(windows.astype(np.float64))
        self.log_weights.copy_(torch.as_tensor(np.log(mixture.weights_), dtype=torch.float32))
        self.means.copy_(torch.as_tensor(mixture.means_, dtype=torch.float32))
        self.variances.copy_(torch.as_tensor(mixture.covariances_, dtype=torch.float32))

    @torch.no_grad()
    def fit_features(self, features: np.ndarray, labels: np.ndarray, kind: str) -> None:
        """Fit on the training bags' encodings ``features`` (B, F) and ``labels`` of label-space ``kind``;
        the buffers (and ``config.n_support``) then hold the fitted classifier."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import SVC

        c = self.config
        center, scale = features.mean(axis=0), features.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)  # a constant feature is left unscaled
        z = (features - center) / scale
        if c.classifier == "logistic" and kind == "multiclass":  # one softmax over the classes
            fitted = [LogisticRegression(C=c.C, class_weight="balanced", max_iter=5000).fit(z, labels)]
        else:  # one binary problem per output: the label, each label, or each class against the rest
            targets = [labels] if kind == "binary" else [(labels == k) if kind == "multiclass" else labels[:, k]
                                                         for k in range(c.n_outputs)]
            make = (lambda: LogisticRegression(C=c.C, class_weight="balanced", max_iter=5000)) if c.classifier == \
                "logistic" else (lambda: SVC(C=c.C, kernel="rbf", gamma=c.gamma / z.shape[1], class_weight="balanced"))
            fitted = [make().fit(z, np.asarray(t, dtype=np.int64)) for t in targets]
        self._set(fitted, center, scale)

    def _set(self, fitted: list, center: np.ndarray, scale: np.ndarray) -> None:
        """The fitted estimators' parameters into fresh buffers (their sizes follow the fit)."""
        from dataclasses import replace

        as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        if self.config.classifier == "logistic":
            coef = np.concatenate([m.coef_ for m in fitted])  # (K, F)
            intercept = np.concatenate([m.intercept_ for m in fitted])
            if self.config.n_outputs == 2 and len(coef) == 1:  # two classes: scikit-learn fits one logit s;
                # as the logits (-s/2, s/2) its softmax is sigmoid(s)
                coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
            self.config = replace(self.config, n_support=0)
            self._make_buffers(self.config)
            self.coef.copy_(as_tensor(coef))
        else:
            support = np.concatenate([m.support_vectors_ for m in fitted])  # every output's support vectors
            dual = np.zeros((len(fitted), len(support)))
            start = 0
            for k, m in enumerate(fitted):
                dual[k, start:start + len(m.support_vectors_)] = m.dual_coef_[0]
                start += len(m.support_vectors_)
            intercept = np.concatenate([m.intercept_ for m in fitted])
            self.config = replace(self.config, n_support=len(support))
            self._make_buffers(self.config)
            self.support.copy_(as_tensor(support))
            self.dual_coef.copy_(as_tensor(dual))
        if len(intercept) != self.config.n_outputs:
            raise ArcmilError(f"the fit gave {len(intercept)} outputs, the model has {self.config.n_outputs}")
        self.intercept.copy_(as_tensor(intercept))
        self.center.copy_(as_tensor(center))
        self.scale.copy_(as_tensor(scale))


def sample_windows(loader, limit: int, seed: int = 0) -> np.ndarray:
    """(W, D) the real windows of ``loader``'s bags, or a seeded uniform sample of ``limit`` of them (each
    window's random key among the ``limit`` smallest), holding at most 2 ``limit`` windows at a time."""
    rng = np.random.default_rng(seed)
    kept, keys, held = [], [], 0  # lists of arrays, joined only when they pass 2 limit
    for batch in loader:
        windows = batch.x.float()[batch.mask].numpy()
        kept.append(windows)
        keys.append(rng.random(len(windows)))
        held += len(windows)
        if held > 2 * limit:
            kept, keys = _smallest_keys(np.concatenate(kept), np.concatenate(keys), limit)
            kept, keys, held = [kept], [keys], limit
    return _smallest_keys(np.concatenate(kept), np.concatenate(keys), limit)[0]


def _smallest_keys(windows: np.ndarray, keys: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows (and keys) of the ``limit`` smallest keys, in reading order; all of them when fewer."""
    if len(keys) <= limit:
        return windows, keys
    rows = np.sort(np.argpartition(keys, limit)[:limit])
    return windows[rows], keys[rows]
