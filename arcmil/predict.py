"""Scoring new bags with a trained checkpoint: ``arcmil predict`` and ``arcmil explain`` start here."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from arcmil.calibration import calibrator_from_dict
from arcmil.config import SCORE_BATCH_SIZE
from arcmil.data import BagSet, Normalizer
from arcmil.errors import ArcmilError, DataError
from arcmil.labels import LabelSpace
from arcmil.models.layers import check_position_table


@dataclass
class Scorer:
    """A checkpoint's model (on ``device``), metadata, normaliser and calibrator, and the raw bags to score
    (their labels, if any, expressed in the model's label space).
    An ONNX checkpoint (``.onnx``) scores with onnxruntime; its graph normalises (``normalizer`` None)."""

    model: nn.Module
    meta: dict
    normalizer: Normalizer | None
    calibrator: object  # arcmil.calibration, the label space's family
    bags: BagSet
    device: object

    @property
    def label_space(self) -> LabelSpace:
        return self.bags.label_space

    @classmethod
    def load(cls, checkpoint: str | os.PathLike, data: str | os.PathLike, device: str = "auto",
             split: str | None = None) -> "Scorer":
        """Refuses data of another dimension than the model's, or too long for its position table;
        ``split``: keep only that split's bags."""
        from arcmil.checkpoint import load_checkpoint
        from arcmil.data import load_bags
        from arcmil.distributed import select_device
        from arcmil.scoring import check_fits

        onnx = Path(checkpoint).suffix == ".onnx"
        device = select_device("cpu" if onnx else device)
        model, meta = OnnxModel.load(checkpoint) if onnx else load_checkpoint(checkpoint, device)
        space = LabelSpace.from_dict(meta.get("label_space"))
        bags = load_bags(data, require_labels=False).in_space(space)
        check_fits(bags, model.config, against=f"the checkpoint {checkpoint}")
        if split:
            if bags.split is None:
                raise DataError(bags.source, f"--split {split} given but the data has no split", field="split")
            bags = bags.subset(np.flatnonzero(bags.split == split))
        return cls(model, meta, None if onnx else Normalizer.from_dict(meta["normalization"]),
                   calibrator_from_dict(meta.get("calibration"), space), bags, device)


ATTENTION_CELLS = 2**22  # bags x windows^2 per onnxruntime call: a 4-head float32 attention matrix of 64 MB


class OnnxModel(nn.Module):
    """An exported graph (arcmil export) behind the model interface the scoring path calls:
    forward(x (B, N, D) raw windows, mask (B, N)) -> logit (B,) or (B, K), weights (B, N) (or (B, K, N) with one
    attention per class), by onnxruntime."""

    def __init__(self, session, config):
        super().__init__()
        self.session, self.config = session, config

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["OnnxModel", dict]:
        """The session (as many threads as torch uses) and the checkpoint metadata the graph carries."""
        from arcmil.models import make_config

        try:
            import onnxruntime
        except ImportError:
            raise ArcmilError("scoring an ONNX graph needs onnxruntime: pip install 'arcmil[onnx]'") from None
        if not Path(path).is_file():
            raise ArcmilError(f"{path}: checkpoint not found")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ArcmilError(f"{path}: not a readable ONNX graph ({str(exc).strip().splitlines()[0]})") from None
        stored = session.get_modelmeta().custom_metadata_map
        if "arcmil.threshold" not in stored:
            raise ArcmilError(f"{path}: not an arcmil export (no arcmil.threshold in its metadata)")
        meta = {key.removeprefix("arcmil."): value for key, value in stored.items() if key.startswith("arcmil.")}
        for key in ("threshold", "model_config", "normalization", "calibration", "label_space"):
            if key in meta:  # label_space: absent in graphs from before label spaces (binary)
                meta[key] = json.loads(meta[key])
        try:
            space = LabelSpace.from_dict(meta.get("label_space"))
            calibrator_from_dict(meta.get("calibration"), space)
        except ArcmilError as exc:
            raise ArcmilError(f"{path}: {exc}") from None
        space.check_threshold(meta["threshold"], str(path))
        config = make_config(meta["model_name"], **meta["model_config"])
        if config.n_outputs != space.n_outputs:
            raise ArcmilError(f"{path}: the model has {config.n_outputs} outputs, its {space.kind} label space "
                              f"{space.n_outputs}")
        return cls(session, config), meta

    def forward(self, x, mask):
        """In slices of at most ATTENTION_CELLS bags x windows^2: onnxruntime's CPU Attention kernel (and
        its (B, 1, N, N) mask) holds each attention matrix whole, where PyTorch's fused kernel never does
        (README: export benchmark)."""
        # the graph itself cannot raise a readable error (onnxruntime reports a Gather index out of range)
        check_position_table(getattr(self.config, "pos_enc", None), getattr(self.config, "max_len", 0),
                             int(mask.sum(1).max()))
        rows = max(1, ATTENTION_CELLS // x.shape[1] ** 2)
        logits, weights = [], []
        for start in range(0, len(x), rows):
            feed = {"embeddings": x[start:start + rows].numpy(), "mask": mask[start:start + rows].numpy()}
            _, logit, weight = self.session.run(None, feed)
            logits.append(logit)
            weights.append(weight)
        return torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(weights))


def predict_to_csv(checkpoint, data, out, *, batch_size: int = SCORE_BATCH_SIZE, device: str = "auto",
                   precision: str = "fp32", overwrite: bool = False) -> str | None:
    """Score ``data`` into ``out`` (one row per bag: probability, prediction at the checkpoint's threshold,
    window weights; bags too long for columns, and weights per class, go to ``<out>_window_weights.csv``).
    Returns the summary to print (None on the ranks that do not write, under torchrun)."""
    from arcmil.distributed import init_world
    from arcmil.outputs import refuse_existing_file, write_new_file
    from arcmil.scoring import predictions_frame, score_bags, wide_weights, window_weights_frame

    out = Path(out)
    long_out = out.with_name(f"{out.stem}_window_weights.csv")
    refuse_existing_file(out, overwrite)
    s = Scorer.load(checkpoint, data, device)
    wide = wide_weights(s.model.config, s.bags)  # else the window weights go to long_out, one row per window
    if not wide:
        refuse_existing_file(long_out, overwrite)
    world = init_world(s.device)
    ev = score_bags(s.model, s.bags, s.normalizer, batch_size=batch_size, device=s.device, precision=precision,
                    world=world, calibrator=s.calibrator)
    if not world.is_main:
        return None
    threshold = s.meta["threshold"]
    frame = predictions_frame(s.bags, ev, threshold, split=s.bags.split, wide=wide)
    if not wide:
        write_new_file(long_out, lambda tmp: window_weights_frame(s.bags, ev).to_csv(tmp, index=False),
                       overwrite=overwrite)
    elif overwrite and out.exists():  # the weights of the predictions being replaced: not this output's
        long_out.unlink(missing_ok=True)
    write_new_file(out, lambda tmp: frame.to_csv(tmp, index=False), overwrite=overwrite)
    summary = f"scored {len(s.bags)} bags with {s.meta['tag']} {_decision_rule(threshold)} -> {out}"
    if s.bags.labels is not None and (s.label_space.class_counts(s.bags.labels) > 0).sum() >= 2:
        metrics = s.label_space.metrics(s.bags.labels, ev.probs, threshold)  # scikit-learn: only for labelled data
        summary += "\n" + pd.Series({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}).to_string()
    return summary


def _decision_rule(threshold) -> str:
    """How predictions were decided, for the summary line."""
    if threshold is None:
        return "(argmax of the class probabilities)"
    if isinstance(threshold, list):
        return f"at per-label thresholds {', '.join(f'{t:.4f}' for t in threshold)}"
    return f"at threshold {threshold:.4f}"
