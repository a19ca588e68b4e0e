"""Scoring bags with a model: ``score_bags`` (the one scoring path), its ``Evaluation``, the prediction
tables and the check that data fits a model. Imports neither scikit-learn nor scipy, so ``arcmil
predict`` pays for torch, numpy and pandas only."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from arcmil.config import SCORE_BATCH_SIZE
from arcmil.data.bagset import BagSet
from arcmil.data.batching import scoring_loader
from arcmil.data.packed import bag_starts
from arcmil.distributed import SINGLE, World
from arcmil.errors import DataError
from arcmil.labels import BINARY, LabelSpace

if TYPE_CHECKING:
    from arcmil.calibration import Calibrator
    from arcmil.data.prepare import Normalizer


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (matrix products in bfloat16, reductions in float32)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class Evaluation:
    """probs: (B,) or (B, K) probabilities (``space``'s map of ``logits``, or calibrated: see
    arcmil.calibration), ordered by bag position (``index``); weights: one (n_i,) array per bag, or
    (n_i, K) from a model with one attention per class; loss is None for unlabelled data."""

    probs: np.ndarray
    labels: np.ndarray | None
    weights: list[np.ndarray]
    index: np.ndarray
    loss: float | None = None
    logits: np.ndarray | None = None
    space: LabelSpace = BINARY

    def class_weights(self, row: int, k: int | None = None) -> np.ndarray:
        """Row ``row``'s window weights (n_i,): per-class weights of class ``k``, or (None) of its most
        probable class, the one ``LabelSpace.caption`` names; one attention's weights whatever ``k``."""
        weights = self.weights[row]
        if weights.ndim == 1:
            return weights
        return weights[:, int(np.argmax(self.probs[row])) if k is None else k]


def _window_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions in a flat per-window array of bags starting at ``starts``, bag after bag."""
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def model_device(model: nn.Module) -> torch.device:
    """Where a model's tensors live (a classical model has buffers only, no parameters); the CPU for a
    module without tensors (an onnxruntime graph: arcmil.predict.OnnxModel)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@torch.inference_mode()
def evaluate(model, loader, criterion=None, device=None, precision: str = "fp32",
             space: LabelSpace | None = None) -> Evaluation:
    """Score every bag of ``loader.bs`` in eval mode (dropout off), restoring the model's mode after.
    ``device``: where batches go (default: the model's). ``space``: the model's label space (default:
    the bags' own).
    Under DDP each rank scores its shards and every rank receives all scores.

    Results go into arrays allocated once up front: many small long-lived per-batch objects would
    fragment the heap and hold on to memory in proportion to the data scanned."""
    device = model_device(model) if device is None else device
    was_training = model.training
    model.eval()
    space = space or loader.bs.label_space
    lengths = loader.bs.lengths
    starts = bag_starts(lengths)
    outputs = () if space.n_outputs == 1 else (space.n_outputs,)
    logits_out, flat = np.zeros((len(lengths), *outputs)), None
    scored, total = np.zeros(len(lengths), dtype=bool), 0.0
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, precision):
            logits, w = model(batch.x, batch.mask)
        logits = logits.float()
        index = batch.index.numpy()
        logits_out[index] = logits.cpu().numpy()
        w = w.float() if w.dim() == 2 else w.float().transpose(1, 2)  # per-class weights: (B, N, K)
        if flat is None:  # one weight per window, or one per window and class
            flat = np.zeros((int(lengths.sum()), *w.shape[2:]), dtype=np.float32)
        flat[_window_rows(starts[index], lengths[index])] = w[batch.mask].cpu().numpy()
        scored[index] = True
        if batch.y is not None and criterion is not None:
            total += criterion.to(device)(logits, batch.y).item() * len(batch.y)
    model.train(was_training)
    if loader.world.active:  # every rank filled its own bags: merge (a rank may have had none)
        parts = loader.world.gather((logits_out, flat, scored, total))
        for part_logits, part_flat, part_scored, _ in parts:
            if part_flat is None:
                continue
            if flat is None:
                flat = np.zeros_like(part_flat)
            logits_out[part_scored] = part_logits[part_scored]
            rows = _window_rows(starts[part_scored], lengths[part_scored])
            flat[rows] = part_flat[rows]
            scored |= part_scored
        total = sum(part[3] for part in parts)
    index = np.flatnonzero(scored)
    weights = np.split(np.zeros(int(lengths.sum()), np.float32) if flat is None else flat, np.cumsum(lengths)[:-1])
    labels = None if loader.bs.labels is None else loader.bs.labels[index].astype(int)
    loss = total / len(index) if labels is not None and criterion is not None else None
    logits_out = logits_out[index]
    probs = space.probabilities(torch.from_numpy(logits_out)).numpy()
    return Evaluation(probs, labels, [weights[i] for i in index], index, loss, logits_out, space)


def score_bags(model: nn.Module, bags: BagSet, normalizer: Normalizer | None = None, *,
               batch_size: int = SCORE_BATCH_SIZE, device=None, precision: str = "fp32", world: World = SINGLE,
               criterion=None, calibrator: Calibrator | None = None, space: LabelSpace | None = None) -> Evaluation:
    """The one scoring path (validation and test, ``predict``, the Python API, ``explain``): bags of any
    source (an on-disk store included) normalised batch by batch, grouped by length under a token
    budget, scored in eval mode; probabilities from ``calibrator`` when given; results in ``bags`` order.
    ``device``: default the model's. ``space``: the model's label space (default: the bags' own)."""
    scored = evaluate(model, scoring_loader(bags, batch_size, normalizer, world), criterion, device, precision,
                      space)
    return scored if calibrator is None else calibrator.apply(scored)


WIDE_WEIGHTS_MAX_WINDOWS = 512  # longer bags get their window weights in long format instead of w_* columns


def per_class_weights(model_config) -> bool:
    """Whether a model gives each window one weight per class (forward's weights (B, K, N)): an attention
    pooler with ``class_attention`` and several outputs."""
    return bool(getattr(model_config, "class_attention", False)) and model_config.n_outputs > 1


def wide_weights(model_config, *parts: BagSet) -> bool:
    """Whether window weights fit as w_* columns: one weight per window (``per_class_weights``) and no bag
    longer than WIDE_WEIGHTS_MAX_WINDOWS. Else they go to a long table (``window_weights_frame``)."""
    return (not per_class_weights(model_config)
            and max(int(part.lengths.max()) for part in parts) <= WIDE_WEIGHTS_MAX_WINDOWS)


def predictions_frame(part: BagSet, ev: Evaluation, threshold, split: str | None = None,
                      wide: bool = True) -> pd.DataFrame:
    """One row per bag: bag_id, [split], [label(s)], probabilities and decisions at ``threshold`` (the
    columns of ``ev.space``: LabelSpace.prediction_columns), then (``wide``) w_0 … w_{N-1}, blank past
    the bag's end. Without them, see ``window_weights_frame``."""
    frame = {"bag_id": part.bag_ids}
    if split is not None:
        frame["split"] = split
    if part.labels is not None:
        frame.update(ev.space.table_columns(part.labels))
    frame.update(ev.space.prediction_columns(ev.probs, threshold))  # ev is in BagSet order
    if wide:
        width = max(len(w) for w in ev.weights)
        weights = np.full((len(part), width), np.nan)
        for row, w in enumerate(ev.weights):
            weights[row, : len(w)] = w
        frame.update({f"w_{j}": weights[:, j] for j in range(width)})
    return pd.DataFrame(frame)


def window_weights_frame(part: BagSet, ev: Evaluation) -> pd.DataFrame:
    """Long format, one row per window: bag_id, window, weight (or weight_<class> per class, from a model
    with one attention per class)."""
    lengths = [len(w) for w in ev.weights]
    frame = {"bag_id": np.repeat(part.bag_ids, lengths), "window": np.concatenate([np.arange(n) for n in lengths])}
    flat = np.concatenate(ev.weights)
    if flat.ndim == 1:
        frame["weight"] = flat
    else:
        frame.update({f"weight_{name}": flat[:, k] for k, name in enumerate(ev.space.classes)})
    return pd.DataFrame(frame)


def check_fits(bags: BagSet, model_config, against: str = "the model") -> None:
    """Refuse, before any work, data of another embedding dimension than the model's (``against``
    names the model in the message) and a bag longer than a learned positional table."""
    if bags.dim != model_config.input_dim:
        raise DataError(bags.source, f"embedding dimension {bags.dim} does not match {against} (input_dim "
                        f"{model_config.input_dim})", field="embeddings")
    max_len = getattr(model_config, "max_len", None)
    if getattr(model_config, "pos_enc", None) == "learned" and bags.lengths.max() > max_len:
        i = int(np.argmax(bags.lengths))
        raise DataError(bags.source, f"{bags.lengths[i]} windows exceed the learned positional table (max_len "
                        f"{max_len}); use a larger max_len or pos_enc 'sin'", bag=str(bags.bag_ids[i]),
                        field="embeddings")
