"""Per-window importance by three methods, and how well each localises the truly positive windows.

* ``weights``: the model's own attention (what ``forward`` returns).
* ``occlusion``: logit(bag) − logit(bag without window i), the window removed through the mask:
  exactly the bag without it (positions count real windows only, so later windows move up one).
* ``integrated_gradients`` (Sundararajan et al. 2017, eq. 3): (x_i − x'_i) · ∫ ∂F/∂x_i along the
  straight path from an all-zero baseline x', summed over features; midpoint Riemann sum. The
  attributions add up to F(x) − F(x') (completeness, Prop. 1), up to the sum's error.
Positive occlusion / integrated-gradient values push the bag towards the positive class. Every method is
scored by faithfulness (arcmil.faithfulness: deletion curves, AOPC, AOPCR against random orders) and,
where windows carry labels, by localisation.

Beyond binary (arcmil.labels) each explanation is of one class's logit: ``explain_bags(..., classes=...)``
gives one row per window and explained class (column ``class``): by default each bag's most probable
class (multi-class) or every label (multi-label), or the classes named. The attention weights are one
per window whatever the class, except from a model with one attention per class (``class_attention``),
whose weights are the explained class's own. Localisation then scores,
per class, the windows of bags that truly hold it.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from arcmil.data import BagSet, collate
from arcmil.data.packed import PackedBags
from arcmil.errors import ConfigError
from arcmil.faithfulness import faithfulness_frame
from arcmil.faithfulness import summarize as summarize_faithfulness
from arcmil.labels import BINARY
from arcmil.plots import plot_deletion_curves, plot_window_heatmap
from arcmil.report import clean_json
from arcmil.settings import IG_STEPS, N_PLOTS

METHODS = ("weights", "occlusion", "integrated_gradients")


@torch.inference_mode()
def occlusion(model, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """x: (n, D) one bag -> (n,) logit drop when each window is masked out ((n, K) for a K-output model;
    NaN for a 1-window bag)."""
    n = x.shape[0]
    full = model(x.unsqueeze(0))[0][0]
    if n == 1:
        return torch.full((1, *full.shape), float("nan"))
    drops = []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=x.device)
        mask = torch.ones(len(rows), n, dtype=torch.bool, device=x.device)
        mask[torch.arange(len(rows)), rows] = False  # copy k hides window rows[k]
        drops.append(full - model(x.expand(len(rows), n, -1), mask)[0])
    return torch.cat(drops).cpu()


def integrated_gradients(model, x: torch.Tensor, steps: int = IG_STEPS, baseline: torch.Tensor | None = None,
                         chunk: int = 64, output: int | None = None) -> torch.Tensor:
    """x: (n, D) one bag -> (n,) attributions of its logit (``output`` k: of a K-output model's k-th
    logit); ``baseline`` (n, D) defaults to zeros."""
    baseline = torch.zeros_like(x) if baseline is None else baseline
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps  # midpoints
    total = torch.zeros_like(x)
    with torch.enable_grad():
        for start in range(0, steps, chunk):
            a = alphas[start:start + chunk].view(-1, 1, 1)
            path = (baseline + a * (x - baseline)).requires_grad_(True)  # (S, n, D)
            logits, _ = model(path)
            logits = logits if output is None else logits[:, output]
            total += torch.autograd.grad(logits.sum(), path)[0].sum(dim=0)
    return ((x - baseline) * total / steps).sum(dim=-1).detach().cpu()


def explain_bags(model, bags: BagSet, methods=METHODS, *, normalizer=None, calibrator=None, steps: int = IG_STEPS,
                 device=None, classes=None) -> pd.DataFrame:
    """One row per window: bag_id, window, [label], [instance_label], prob, and one column per method.

    ``bags``: raw windows from any source (an on-disk store included), normalised by ``normalizer``
    (the model's) one bag at a time; ``prob`` (calibrated by ``calibrator``, the model's) and ``weights``
    come from the scoring path that predict uses, so they equal predict's.
    Beyond binary (``bags.label_space``, the model's) one row per window and explained class: ``class``
    and its ``prob``; ``classes``: the class names to explain, or None for each bag's most probable
    class (multi-class) or every label (multi-label)."""
    from arcmil.scoring import model_device, score_bags

    device = model_device(model) if device is None else device
    model.eval()
    space = bags.label_space
    if classes and space.binary:
        raise ConfigError("classes to explain are for multi-class and multi-label models; a binary model has one logit")
    unknown = sorted(set(classes or ()) - set(space.classes))
    if unknown:
        raise ConfigError(f"unknown class {unknown[0]!r} to explain; the model's: {', '.join(space.classes)}")
    bags = replace(bags, bags=PackedBags.from_list(bags.bags))  # packed once, so each bag is a row range
    scored = score_bags(model, bags, normalizer, device=device, calibrator=calibrator)
    rows = []
    for i in range(len(bags)):
        x = collate(bags, [i], normalizer).x[0].to(device)  # (n, D)
        drops = occlusion(model, x).numpy() if "occlusion" in methods else None
        for k in _explained(space, scored.probs[i], classes):
            frame = {"bag_id": bags.bag_ids[i], "window": np.arange(len(x))}
            if not space.binary:
                frame["class"] = space.classes[k]
            if bags.labels is not None:
                frame["label"] = _holds(space, bags.labels[i], k)
            if bags.instance_labels is not None:
                frame["instance_label"] = bags.instance_labels[i]
            frame["prob"] = scored.probs[i] if k is None else scored.probs[i][k]
            if "weights" in methods:  # per-class weights: the explained class's
                frame["weights"] = scored.class_weights(i, k)
            if drops is not None:
                frame["occlusion"] = drops if k is None else drops[:, k]
            if "integrated_gradients" in methods:
                frame["integrated_gradients"] = integrated_gradients(model, x, steps, output=k).numpy()
            rows.append(pd.DataFrame(frame))
    return pd.concat(rows, ignore_index=True)


def _explained(space, probs, classes) -> list:
    """The logits to explain for one bag: [None] (binary's one), or class positions."""
    if space.binary:
        return [None]
    if classes:
        return [space.classes.index(c) for c in classes]
    return [int(np.argmax(probs))] if space.kind == "multiclass" else list(range(len(space.classes)))


def _holds(space, label, k) -> int:
    """Whether a bag truly is (multi-class) or carries (multi-label) class ``k``: the ``label`` column
    of explanation rows, 1 or 0 (binary: the bag's label)."""
    if k is None:
        return label
    return int(label == k) if space.kind == "multiclass" else int(label[k])


def localisation_auc(frame: pd.DataFrame, methods=METHODS) -> dict:
    """Instance-localisation ROC-AUC of each method over the windows of positive bags (beyond binary:
    of the rows explaining a class their bag truly holds, also per ``class``).

    ``pooled``: one AUC over all those windows; ``per_bag_mean``: the mean AUC of the positive bags
    that hold both positive and negative windows."""
    positive = frame[frame["label"] == 1]
    out = {method: _localisation(positive, method) for method in methods}
    if "class" in frame:
        out["per_class"] = {name: {method: _localisation(rows, method) for method in methods}
                            for name, rows in positive.groupby("class", sort=False)}
    return out


def _localisation(positive: pd.DataFrame, method: str) -> dict:
    scores = positive[method].fillna(positive[method].min())
    groups = positive.groupby(["bag_id", "class"] if "class" in positive else "bag_id")
    per_bag = [roc_auc_score(g["instance_label"], scores[g.index]) for _, g in groups
               if g["instance_label"].nunique() == 2]
    return {
        "pooled": float(roc_auc_score(positive["instance_label"], scores))
        if positive["instance_label"].nunique() == 2 else None,
        "per_bag_mean": float(np.mean(per_bag)) if per_bag else None,
        "n_bags": int(positive["bag_id"].nunique()), "n_windows": int(len(positive)),
    }


def write_explanations(directory: Path, frame: pd.DataFrame, methods=METHODS, *, n_plots: int = N_PLOTS,
                       title: str = "", faithfulness: tuple | None = None) -> dict | None:
    """importances.csv, one heatmap PNG per method (a seeded sample of bags, or of (bag, class) rows
    beyond binary, positives first), ``faithfulness`` ((per-bag rows, pooled record) of
    arcmil.faithfulness.faithfulness_frame and summarize) as faithfulness.csv, faithfulness.json and
    deletion.png, and, when the data has per-window truth, localisation.json. Returns the localisation scores."""
    frame.to_csv(directory / "importances.csv", index=False)
    if faithfulness is not None:
        per_bag, pooled = faithfulness
        per_bag.to_csv(directory / "faithfulness.csv", index=False)
        (directory / "faithfulness.json").write_text(json.dumps(clean_json(pooled), indent=2))
        plot_deletion_curves(pooled, directory / "deletion.png", title=f"deletion curves — {title}")
    key = ["bag_id", "class"] if "class" in frame else ["bag_id"]
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in frame.groupby(key, sort=False)}
    names = list(groups)
    if "label" in frame:
        holds = np.array([g["label"].iloc[0] for g in groups.values()])
        sample = [names[i] for i in BINARY.display_sample(holds, n_plots)]
    else:
        sample = names[:n_plots]
    chosen = [groups[k] for k in sample]
    truth = [g["instance_label"].to_numpy() for g in chosen] if "instance_label" in frame else None
    for method in methods:
        plot_window_heatmap([g[method].to_numpy() for g in chosen],
                            [BINARY.caption(g["label"].iloc[0] if "label" in g else None, g["prob"].iloc[0])
                             for g in chosen], [" ".join(map(str, k)) for k in sample],
                            directory / f"heatmap_{method}.png", instance_labels=truth, signed=method != "weights",
                            colorbar=method, title=f"{method.replace('_', ' ')} — {title}")
    if "instance_label" not in frame or "label" not in frame:
        return None
    scores = localisation_auc(frame, methods)
    (directory / "localisation.json").write_text(json.dumps(clean_json(scores), indent=2))
    return scores


def explain_to_dir(checkpoint, data, out, methods=METHODS, *, steps: int = IG_STEPS, n_plots: int = N_PLOTS,
                   split: str | None = None, device: str = "auto", classes=None) -> str:
    """``arcmil explain``: importances.csv, heatmaps and localisation scores of ``data`` under
    ``checkpoint`` into the new directory ``out`` (it appears whole). ``classes``: see ``explain_bags``.
    Returns the summary to print."""
    from arcmil.outputs import refuse_existing_dir, staged_dir
    from arcmil.predict import Scorer
    from arcmil.report import markdown_table

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown explanation method {unknown[0]!r}; valid: {', '.join(METHODS)}")
    if Path(checkpoint).suffix == ".onnx":
        raise ConfigError(f"{checkpoint}: explain needs the PyTorch checkpoint (.pth): occlusion and integrated "
                          "gradients run the model itself; an ONNX graph only scores (arcmil predict)")
    out = refuse_existing_dir(out)
    s = Scorer.load(checkpoint, data, device, split=split)
    frame = explain_bags(s.model, s.bags, methods, normalizer=s.normalizer, calibrator=s.calibrator, steps=steps,
                         device=s.device, classes=classes)
    per_bag, curves = faithfulness_frame(s.model, s.bags, frame, methods, s.normalizer, s.device)
    pooled = summarize_faithfulness(per_bag, curves)
    with staged_dir(out) as tmp:
        scores = write_explanations(tmp, frame, methods, n_plots=n_plots, title=s.meta["tag"],
                                    faithfulness=(per_bag, pooled))
    windows = f"{len(frame)} windows" if "class" not in frame else f"{len(frame)} window-class rows"
    summary = f"explained {len(s.bags)} bags ({windows}) with {s.meta['tag']} -> {out}"
    pooled = pooled["methods"]
    summary += ("\nfaithfulness (drop of the explained logit as the top-ranked windows are removed, up to half the "
                "bag; AOPCR = AOPC - AOPC of random orders):\n"
                + markdown_table([{"method": m, **pooled[m]} for m in methods],
                                 ("method", "aopc", "aopc_random", "aopcr", "beats_random", "n")))
    if scores:
        columns = ("method", "pooled", "per_bag_mean", "n_bags", "n_windows")
        summary += ("\ninstance-localisation ROC-AUC over the windows of positive bags:\n"
                    + markdown_table([{"method": m, **scores[m]} for m in methods], columns))
        for name, per_method in scores.get("per_class", {}).items():
            summary += f"\n\nclass {name}:\n" + markdown_table([{"method": m, **v} for m, v in per_method.items()],
                                                                columns)
    return summary
