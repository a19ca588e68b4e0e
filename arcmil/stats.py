"""Summaries over repeated runs and paired tests between models evaluated on the same runs."""
from __future__ import annotations

import numpy as np
from scipy import stats


def mean_std(values) -> dict:
    """Mean and sample standard deviation, ignoring None (e.g. ROC-AUC of a one-class fold)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None,
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0 if len(v) else None, "n": int(len(v))}


def paired_test(a, b, *, test_train_ratio: float | None = None, alpha: float = 0.05) -> dict:
    """Is the mean of a - b non-zero? a, b: one score per shared seed/fold, in the same order.

    With ``test_train_ratio`` (n_test / n_train of each run, for runs whose training sets overlap:
    repeated random splits or cross-validation) the variance is corrected as in Nadeau & Bengio
    (2003), "Inference for the generalization error": var * (1/n + n_test/n_train). Without it,
    the plain paired t-test (runs that differ only by seed on one fixed split).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else None, "alpha": alpha,
           "test": "paired t" if test_train_ratio is None else "corrected resampled t (Nadeau & Bengio 2003)"}
    if n < 2:
        out.update(t=None, p_value=1.0)
    elif np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        # differences without variance: the t statistic is undefined (0/0 or infinite), not evidence; the
        # exact sign test asks only how often n runs agree in direction by chance (n = 2: p = 0.5)
        positive = int((d > 0).sum())
        out.update(test="sign test (the differences have no variance)", t=None,
                   p_value=1.0 if d[0] == 0 else float(stats.binomtest(positive, n).pvalue))
    else:
        scale = 1.0 / n + (test_train_ratio or 0.0)
        t = d.mean() / np.sqrt(scale * d.var(ddof=1))
        out.update(t=float(t), p_value=float(2 * stats.t.sf(abs(t), df=n - 1)))
    out["significant"] = bool(out["p_value"] < alpha)
    return out
