"""Faithfulness of window importances: how fast the model's score falls as the windows an explanation
ranks highest are removed, against removing them in random order.

For one bag of n windows and a ranking (most important first), the deletion curve is the explained logit
(binary: the bag's logit; beyond binary: the explained class's) after the first ``k_j = ceil(f_j n)``
windows are masked out, for the fractions f_j = 0, 5%, ..., 50% (``FRACTIONS``; at most n - 1 windows go,
so a bag is never empty). Removing through the mask is exactly the bag without them, as in occlusion.

* AOPC (Samek et al. 2017): the mean over the curve's points of ``logit(bag) - logit(bag without the top
  k_j)``; a faithful ranking removes the evidence first, so its curve falls fast and its AOPC is high.
* AOPCR: AOPC minus the mean AOPC of ``N_RANDOM`` random orders of the same bag (as MILLET, Early et al.
  2024, reports it; "patch flipping" in xMIL, Hense et al. 2024): above 0 the ranking beats chance.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

FRACTIONS = tuple(round(0.05 * j, 2) for j in range(11))  # 0, 5%, ..., 50% of the bag's windows
N_RANDOM = 8  # random orders per bag, the AOPCR's reference


def removed_counts(n: int, fractions=FRACTIONS) -> np.ndarray:
    """Windows removed at each point of a curve: ceil(f n), at most n - 1."""
    return np.array([min(math.ceil(f * n - 1e-9), n - 1) for f in fractions], dtype=np.int64)


CELLS_PER_PASS = 2**24  # masked copies x windows^2 per forward pass: bounds a Transformer's attention memory


@torch.inference_mode()
def deletion_curves(model, x: torch.Tensor, orders: np.ndarray, output: int | None = None,
                    fractions=FRACTIONS) -> np.ndarray:
    """x (n, D) one bag, orders (R, n) window rankings (most important first) -> (R, len(fractions)) the
    drop of the explained logit (``output`` k of a K-output model) when each ranking's top
    ``removed_counts`` windows are masked out (0 at the first point, the whole bag)."""
    n = x.shape[0]
    counts = removed_counts(n, fractions)
    mask = np.ones((len(orders), len(counts), n), dtype=bool)
    for r, order in enumerate(orders):
        for j, k in enumerate(counts):
            mask[r, j, order[:k]] = False
    flat = torch.from_numpy(mask.reshape(-1, n)).to(x.device)
    per_pass = max(1, CELLS_PER_PASS // (n * n))
    logits = torch.cat([model(x.expand(len(part), n, -1), part)[0].float() for part in flat.split(per_pass)])
    logits = (logits if output is None else logits[:, output]).reshape(len(orders), len(counts)).cpu().numpy()
    return logits[:, :1] - logits


def aopc(drops: np.ndarray) -> np.ndarray:
    """(R, L) deletion curves (logit drops) -> (R,) AOPC, the mean drop over the curve's points."""
    return drops.mean(axis=1)


def random_orders(n: int, seed: int, count: int = N_RANDOM) -> np.ndarray:
    """(count, n) random rankings of a bag's windows, seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n) for _ in range(count)])


def ranking(importance: np.ndarray) -> np.ndarray:
    """Window positions by importance, highest first (ties in window order; NaN last)."""
    return np.argsort(-np.nan_to_num(importance, nan=-np.inf), kind="stable")


def bag_faithfulness(model, x: torch.Tensor, importances: dict[str, np.ndarray], output: int | None = None,
                     seed: int = 0) -> tuple[dict, dict]:
    """One bag (x (n, D)) and its importances per method -> ({method: {aopc, aopc_random, aopcr}},
    {method and 'random': its deletion curve of logit drops (len(FRACTIONS),), random: the orders' mean})."""
    methods = list(importances)
    orders = np.stack([ranking(importances[m]) for m in methods] + list(random_orders(x.shape[0], seed)))
    curves = deletion_curves(model, x, orders, output)
    scores = aopc(curves)
    chance = float(scores[len(methods):].mean())
    rows = {m: {"aopc": float(scores[i]), "aopc_random": chance, "aopcr": float(scores[i]) - chance}
            for i, m in enumerate(methods)}
    return rows, {**{m: curves[i] for i, m in enumerate(methods)}, "random": curves[len(methods):].mean(axis=0)}


def faithfulness_frame(model, bags, frame: pd.DataFrame, methods, normalizer=None, device=None) -> tuple:
    """Every (bag[, class]) group of an explanation frame (``explain_bags``'s rows) scored: per-bag rows
    (bag_id[, class], method, aopc, aopc_random, aopcr) and the mean deletion curve (logit drops) of each
    method and of the random orders. ``bags``: those the frame explains, in its order."""
    from arcmil.data import collate
    from arcmil.scoring import model_device

    device = model_device(model) if device is None else device
    position = {str(b): i for i, b in enumerate(bags.bag_ids)}
    space = bags.label_space
    key = ["bag_id", "class"] if "class" in frame else ["bag_id"]
    rows, curves = [], {}
    for names, group in frame.groupby(key, sort=False):
        names = names if isinstance(names, tuple) else (names,)
        i = position[str(names[0])]
        x = collate(bags, [i], normalizer).x[0].to(device)
        output = None if space.binary else space.classes.index(names[1])
        scores, bag_curves = bag_faithfulness(model, x, {m: group[m].to_numpy() for m in methods}, output, seed=i)
        rows += [{**dict(zip(key, names)), "method": m, **scores[m]} for m in methods]
        for name, curve in bag_curves.items():
            curves.setdefault(name, []).append(curve)
    return pd.DataFrame(rows), {name: np.mean(c, axis=0) for name, c in curves.items()}


def summarize(per_bag: pd.DataFrame, curves: dict) -> dict:
    """Pooled over bags, per method: mean AOPC, mean random AOPC, mean AOPCR, the share of bags where the
    ranking beats chance, and the mean deletion curves (fractions and logits)."""
    out = {"fractions": list(FRACTIONS), "random_curve": curves["random"].tolist(), "methods": {}}
    for method, rows in per_bag.groupby("method", sort=False):
        out["methods"][method] = {**{name: float(rows[name].mean()) for name in ("aopc", "aopc_random", "aopcr")},
                                  "beats_random": float((rows["aopcr"] > 0).mean()), "n": int(len(rows)),
                                  "curve": curves[method].tolist()}
    return out
