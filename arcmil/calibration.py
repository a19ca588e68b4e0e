"""Calibrated probabilities: a map from a model's bag logits to probabilities, fitted on validation.

Weighted BCE (``pos_weight``) trains scores that rank well but do not match observed frequencies;
the calibrator is fitted after training on the validation split and then applies everywhere the
model scores (the threshold is tuned on calibrated scores; checkpoints, ``predict`` and the Python
API carry it).

- ``platt`` (default): p = sigmoid(a * logit + b), Platt's (1999) two-parameter map, fitted by
  scikit-learn's LogisticRegression on the validation logits with its default L2 prior on the slope
  (C = 1; the intercept is not penalised). The bias b undoes the shift of about log(pos_weight) that
  weighted BCE puts on every logit, which no temperature can; the prior keeps the slope finite on
  separable validation scores (distinct scores stay distinct, no ties at exactly 1.0) and weighs
  less as the validation set grows. a > 0: a validation set on which the score ranks no better than
  chance gets a = MIN_PLATT_SLOPE, nearly its base rate, with the model's ranking kept (never reversed).
  (Platt's smoothed targets instead of the prior were measured too: README, calibration table.)
- ``temperature``: p = sigmoid(logit / T), one parameter, the ranking unchanged, no shift undone.
- ``isotonic``: scikit-learn's IsotonicRegression on the raw probabilities, a monotone step map
  (ties can merge nearby scores).
- ``none``: p = sigmoid(logit).

Beyond binary (arcmil.labels): multi-label fits one such map per label on that label's column
(``PerLabelCalibrator``); multi-class maps the K logits before the softmax (``SoftmaxCalibrator``):
``platt`` is vector scaling, p = softmax(a * z + b) with a per-class slope and bias (Guo et al. 2017),
the same penalised fit as Platt's (L2 prior 1/PLATT_C on the slopes, biases free); ``temperature`` is
softmax(z / T); ``isotonic`` has no multi-class form and is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from arcmil.config import CALIBRATIONS
from arcmil.errors import ArcmilError, ConfigError
from arcmil.labels import BINARY, LabelSpace

ECE_BINS = 15  # equal-width probability bins of the expected calibration error
LOG_TEMPERATURE_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: wider never helps a validation NLL fit
MIN_PLATT_SLOPE = float(np.exp(-LOG_TEMPERATURE_BOUNDS[1]))  # the flattest map temperature scaling can fit
LOGIT_FLOOR = 1e-7  # an isotonic probability of exactly 0 or 1 keeps finite log-odds (calibrated_logits)
PLATT_C = 1.0  # scikit-learn's default inverse L2 strength on Platt's slope (README: calibration table)


class _LogitMap:
    """What every calibrator shares: ``probabilities`` (torch, its own) applied to numpy logits and to a
    scored split."""

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """(B,) or (B, K) logits -> calibrated probabilities of the same shape (float64)."""
        return self.probabilities(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()

    def apply(self, evaluation):
        """A scored split (arcmil.scoring.Evaluation) with its probabilities from this calibrator."""
        return replace(evaluation, probs=self(evaluation.logits))


@dataclass(frozen=True)
class Calibrator(_LogitMap):
    """``method`` with its fitted parameters: Platt's ``slope`` and ``bias``, the ``temperature`` T, or
    the isotonic map's knots (``knots_x`` raw probabilities -> ``knots_y`` calibrated, linear between,
    clipped outside)."""

    method: str = "none"
    temperature: float = 1.0
    slope: float = 1.0
    bias: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    @classmethod
    def fit(cls, method: str, labels: np.ndarray, logits: np.ndarray) -> "Calibrator":
        """Fit on validation ``labels`` (B,) in {0, 1} and the model's ``logits`` (B,)."""
        # fitting needs scipy and scikit-learn, applying a fitted map does not (arcmil.scoring)
        from scipy.optimize import minimize_scalar
        from scipy.special import expit, log_expit
        from sklearn.isotonic import IsotonicRegression

        labels, logits = np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)
        if method == "platt":
            return cls("platt", **_platt(labels, logits))
        if method == "temperature":
            def nll(log_t):
                z = logits / np.exp(log_t)
                return -np.mean(labels * log_expit(z) + (1 - labels) * log_expit(-z))

            best = minimize_scalar(nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded",
                                   options={"xatol": 1e-6})
            return cls("temperature", temperature=float(np.exp(best.x)))
        if method == "isotonic":
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(expit(logits), labels)
            return cls("isotonic", knots_x=tuple(map(float, iso.X_thresholds_)),
                       knots_y=tuple(map(float, iso.y_thresholds_)))
        if method == "none":
            return cls()
        raise ArcmilError(f"calibrate must be one of {', '.join(CALIBRATIONS)}, got {method!r}")

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (any shape) -> the logits of the calibrated probabilities (log-odds; the isotonic map's
        probabilities kept within LOGIT_FLOOR of 0 and 1)."""
        if self.method == "platt":
            return logits * self.slope + self.bias
        if self.method == "temperature":
            return logits / self.temperature
        if self.method == "isotonic":
            # log p - log(1 - p) spelled out: torch.logit(eps=) twice in one exported graph (an ensemble's
            # members) gives two ONNX nodes of one name, which onnxruntime refuses to load
            p = self.probabilities(logits).clamp(LOGIT_FLOOR, 1 - LOGIT_FLOOR)
            return torch.log(p) - torch.log1p(-p)
        return logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (any shape) -> calibrated probabilities, in torch ops an ONNX graph can hold: the
        isotonic map interpolates between its knots with comparisons and gathers (np.interp's result)."""
        if self.method != "isotonic":
            return torch.sigmoid(self.calibrated_logits(logits))
        probs = torch.sigmoid(logits)
        x = torch.tensor(self.knots_x, dtype=probs.dtype, device=probs.device)
        y = torch.tensor(self.knots_y, dtype=probs.dtype, device=probs.device)
        if len(x) == 1:
            return y[0].expand_as(probs)
        right = (probs.unsqueeze(-1) >= x).sum(-1).clamp(1, len(x) - 1)  # knots at or below p (searchsorted)
        x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
        t = ((probs - x0) / (x1 - x0).clamp(min=torch.finfo(probs.dtype).tiny)).clamp(0.0, 1.0)
        return y0 + t * (y1 - y0)

    def to_dict(self) -> dict:
        """Plain data for checkpoints and results."""
        out = {"method": self.method}
        if self.method == "platt":
            out.update(slope=self.slope, bias=self.bias)
        if self.method == "temperature":
            out["temperature"] = self.temperature
        if self.method == "isotonic":
            out.update(knots_x=list(self.knots_x), knots_y=list(self.knots_y))
        return out

    @classmethod
    def from_dict(cls, data: dict | None) -> "Calibrator":
        """The inverse of ``to_dict``; None (a checkpoint from before calibration) is no calibration."""
        if data is None:
            return cls()
        method = data.get("method")
        if method not in CALIBRATIONS:
            raise ArcmilError(f"unknown calibration {data!r} (expected method in {', '.join(CALIBRATIONS)})")
        knots_x, knots_y = tuple(data.get("knots_x", ())), tuple(data.get("knots_y", ()))
        temperature = float(data.get("temperature", 1.0))
        slope, bias = float(data.get("slope", 1.0)), float(data.get("bias", 0.0))
        if method == "isotonic" and (len(knots_x) != len(knots_y) or not knots_x):
            raise ArcmilError(f"isotonic calibration needs matching knots, got {len(knots_x)} and {len(knots_y)}")
        if not temperature > 0:
            raise ArcmilError(f"calibration temperature must be positive, got {temperature}")
        if not (slope > 0 and np.isfinite(slope) and np.isfinite(bias)):
            raise ArcmilError(f"Platt calibration needs a finite slope > 0 and bias, got {slope} and {bias}")
        return cls(method, temperature, slope, bias, knots_x, knots_y)


@dataclass(frozen=True)
class PerLabelCalibrator(_LogitMap):
    """Multi-label: one binary ``Calibrator`` per label, each fitted on its own column."""

    members: tuple[Calibrator, ...]

    @property
    def method(self) -> str:
        return self.members[0].method

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, K) calibrated log-odds, column k by label k's map."""
        return torch.stack([m.calibrated_logits(logits[..., k]) for k, m in enumerate(self.members)], dim=-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, K) probabilities, column k by label k's map."""
        return torch.stack([m.probabilities(logits[..., k]) for k, m in enumerate(self.members)], dim=-1)

    def to_dict(self) -> dict:
        return {"method": self.method, "family": "per_label", "labels": [m.to_dict() for m in self.members]}


@dataclass(frozen=True)
class SoftmaxCalibrator(_LogitMap):
    """Multi-class: softmax(``slopes`` * z + ``biases``) (vector scaling, ``platt``), softmax(z / ``temperature``)
    or plain softmax (``none``)."""

    method: str
    slopes: tuple[float, ...]
    biases: tuple[float, ...]
    temperature: float = 1.0

    @classmethod
    def fit(cls, method: str, labels: np.ndarray, logits: np.ndarray) -> "SoftmaxCalibrator":
        """Fit on validation class ids ``labels`` (B,) and ``logits`` (B, K)."""
        from scipy.optimize import minimize, minimize_scalar
        from scipy.special import log_softmax

        labels, logits = np.asarray(labels, dtype=np.int64), np.asarray(logits, dtype=np.float64)
        k = logits.shape[1]
        ones, zeros = (1.0,) * k, (0.0,) * k
        onehot = np.eye(k)[labels]
        if method == "none":
            return cls("none", ones, zeros)
        if method == "temperature":
            def nll(log_t):
                return -np.mean((onehot * log_softmax(logits / np.exp(log_t), axis=1)).sum(1))

            best = minimize_scalar(nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-6})
            return cls("temperature", ones, zeros, float(np.exp(best.x)))
        if method != "platt":
            raise ConfigError(f"calibrate {method!r} has no multi-class form; use platt (vector scaling), "
                              "temperature or none")

        def objective(params):  # Platt's penalised fit per class: PLATT_C x summed NLL + slopes^2 / 2
            a, b = params[:k], params[k:]
            log_p = log_softmax(logits * a + b, axis=1)
            residual = np.exp(log_p) - onehot  # d NLL / d (a z + b)
            loss = -PLATT_C * (onehot * log_p).sum() + 0.5 * (a ** 2).sum()
            grad = np.concatenate([PLATT_C * (residual * logits).sum(0) + a, PLATT_C * residual.sum(0)])
            return loss, grad

        start = np.concatenate([np.ones(k), np.zeros(k)])
        bounds = [(MIN_PLATT_SLOPE, None)] * k + [(None, None)] * k  # positive slopes keep each class's ranking
        fit = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 1000})
        return cls("platt", tuple(map(float, fit.x[:k])), tuple(map(float, fit.x[k:])))

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, K) logits whose softmax is the calibrated distribution."""
        slopes = torch.tensor(self.slopes, dtype=logits.dtype, device=logits.device)
        biases = torch.tensor(self.biases, dtype=logits.dtype, device=logits.device)
        return (logits * slopes + biases) / self.temperature

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K) logits -> (B, K) probabilities, rows summing to 1."""
        return torch.softmax(self.calibrated_logits(logits), dim=-1)

    def to_dict(self) -> dict:
        return {"method": self.method, "family": "softmax", "slopes": list(self.slopes), "biases": list(self.biases),
                "temperature": self.temperature}


def fit_calibrator(method: str, labels: np.ndarray, logits: np.ndarray, space: LabelSpace = BINARY):
    """The calibration map of ``space``'s family (see the module docstring), fitted on validation."""
    if space.binary:
        return Calibrator.fit(method, labels, logits)
    if space.kind == "multilabel":
        return PerLabelCalibrator(tuple(Calibrator.fit(method, labels[:, k], logits[:, k])
                                        for k in range(logits.shape[1])))
    return SoftmaxCalibrator.fit(method, labels, logits)


def calibrator_from_dict(data: dict | None, space: LabelSpace = BINARY):
    """The inverse of any calibrator's ``to_dict``, checked against ``space``; None is no calibration.
    A malformed record is an ArcmilError."""
    try:
        return _calibrator_from_dict(data, space)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArcmilError(f"calibration {data!r} is malformed ({type(exc).__name__}: {exc})") from None


def _calibrator_from_dict(data: dict | None, space: LabelSpace):
    if space.binary:
        if data is not None and "family" in data:
            raise ArcmilError(f"a {data['family']} calibration for a binary model")
        return Calibrator.from_dict(data)
    k = len(space.classes)
    family = {"multilabel": "per_label", "multiclass": "softmax"}[space.kind]
    if data is None:
        data = {"method": "none", "family": family, "labels": [{"method": "none"}] * k,
                "slopes": [1.0] * k, "biases": [0.0] * k}
    if data.get("family") != family:
        raise ArcmilError(f"calibration {data.get('family')!r} does not fit a {space.kind} model (expected {family})")
    if family == "per_label":
        members = tuple(Calibrator.from_dict(m) for m in data["labels"])
        if len(members) != k:
            raise ArcmilError(f"{len(members)} per-label calibrations for {k} labels")
        return PerLabelCalibrator(members)
    slopes, biases = tuple(map(float, data["slopes"])), tuple(map(float, data["biases"]))
    temperature = float(data.get("temperature", 1.0))
    if len(slopes) != k or len(biases) != k or not (temperature > 0 and all(a > 0 for a in slopes)):
        raise ArcmilError(f"softmax calibration needs {k} positive slopes, {k} biases and a positive temperature")
    return SoftmaxCalibrator(data["method"], slopes, biases, temperature)


def _platt(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Platt's map on validation: scikit-learn's logistic regression of the labels on the logits
    (PLATT_C); a slope <= 0 becomes MIN_PLATT_SLOPE, with the bias refitted for it."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_expit
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=PLATT_C, tol=1e-10, max_iter=1000).fit(logits[:, None], labels)
    slope, bias = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if slope <= 0:  # ranks no better than chance on validation: keep the ranking, fit the bias alone
        slope = MIN_PLATT_SLOPE

        def loss(b):  # the same penalised objective; the penalty is constant for a fixed slope
            z = slope * logits + b
            return -np.sum(labels * log_expit(z) + (1 - labels) * log_expit(-z))

        bias = float(minimize_scalar(loss).x)
    return {"slope": slope, "bias": bias}


def expected_calibration_error(labels, probs, n_bins: int = ECE_BINS) -> float:
    """Sum over equal-width bins of (bin share) x |mean label - mean probability| (Guo et al. 2017)."""
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)  # [k/n, (k+1)/n), 1.0 in the last bin
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, labels, n_bins) - np.bincount(bins, probs, n_bins))
    return float(gap.sum() / max(count.sum(), 1))


def calibration_metrics(labels, probs, space: LabelSpace = BINARY) -> dict:
    """Brier score (scikit-learn) and expected calibration error of probabilities against labels.
    Multi-class: the multi-class Brier score and the ECE of the top class's confidence; multi-label:
    both over every (bag, label) pair (LabelSpace.reliability_pairs)."""
    from sklearn.metrics import brier_score_loss

    outcome, confidence = space.reliability_pairs(labels, probs)
    ece = expected_calibration_error(outcome, confidence)
    if space.kind == "multiclass":
        return {"brier": float(brier_score_loss(labels, probs, labels=range(np.shape(probs)[1]))), "ece": ece}
    return {"brier": float(brier_score_loss(outcome, confidence)), "ece": ece}
