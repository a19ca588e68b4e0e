"""ONNX export of a trained checkpoint: one graph from raw windows to calibrated probabilities.

The graph takes ``embeddings`` (B, N, D) float32 and ``mask`` (B, N) bool (True = a real window),
batch size and bag length both dynamic, and returns ``probability`` (B,) after the checkpoint's
normalisation and calibration, ``logit`` (B,) and ``weights`` (B, N) (0 on padding); a multi-class or
multi-label model returns ``probability`` and ``logit`` as (B, K), and ``weights`` as (B, K, N) when it has
one attention per class. The tuned threshold(s), model name,
tag, model config, label space, normalisation, calibration and arcmil version are in the model's
metadata, so onnxruntime alone can score documents (README: "Scoring with onnxruntime").
Built with PyTorch's current exporter (``torch.onnx.export(..., dynamo=True)``; extra ``arcmil[onnx]``) at
opset 23, where exact attention becomes ONNX's fused ``Attention`` operator (onnxruntime >= 1.23 runs it
on CPU) instead of matmul, mask and softmax spelled out over (B, H, N, N) tensors.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from arcmil import __version__
from arcmil.calibration import calibrator_from_dict
from arcmil.data import Normalizer
from arcmil.errors import ArcmilError, ConfigError
from arcmil.labels import LabelSpace
from arcmil.models.attention import ONNX_EXPORT

INPUTS, OUTPUTS = ("embeddings", "mask"), ("probability", "logit", "weights")
OPSET = 23


class ScoringGraph(nn.Module):
    """A checkpoint's normalisation, model and calibration as one module: what the ONNX graph holds."""

    def __init__(self, model: nn.Module, normalizer: Normalizer, calibrator):
        super().__init__()
        self.model, self.normalizer, self.calibrator = model, normalizer, calibrator

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor):
        """embeddings (B, N, D), mask (B, N) -> probability (B,) or (B, K), logit likewise, weights (B, N)
        or (B, K, N)."""
        x = torch.where(mask.unsqueeze(-1), self.normalizer.apply(embeddings), 0.0)  # padding 0, as the loaders
        logit, weights = self.model(x, mask)
        logit = logit.float()
        return self.calibrator.probabilities(logit), logit, weights.float()


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs onnx and onnxscript: pip install 'arcmil[onnx]'") from None
    return onnx


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``checkpoint`` as the ONNX graph ``out`` (written whole; an existing file is refused
    unless ``overwrite``). Returns the path."""
    from arcmil.checkpoint import load_checkpoint
    from arcmil.outputs import refuse_existing_file, write_new_file

    onnx = _import_onnx()
    out = refuse_existing_file(out, overwrite)  # before the export's seconds of work
    model, meta = load_checkpoint(checkpoint)
    space = LabelSpace.from_dict(meta.get("label_space"))
    calibrator = calibrator_from_dict(meta.get("calibration"), space)
    graph = ScoringGraph(model, Normalizer.from_dict(meta["normalization"]), calibrator).eval()
    dim = meta["model_config"]["input_dim"]
    embeddings = torch.randn(3, 5, dim)  # example sizes only: batch and bag length stay dynamic
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    batch, windows = torch.export.Dim("batch", min=1), torch.export.Dim("windows", min=1)
    shapes = {"embeddings": {0: batch, 1: windows}, "mask": {0: batch, 1: windows}}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:  # the exporter's notes (deprecations, skipped torchvision ops) say nothing about this graph
        exporter_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with ONNX_EXPORT:
                program = torch.onnx.export(graph, (embeddings, mask), input_names=list(INPUTS),
                                            output_names=list(OUTPUTS), dynamic_shapes=shapes, opset_version=OPSET,
                                            dynamo=True, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user needs the model and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArcmilError(f"{checkpoint}: model {meta['model_name']!r} could not be exported to ONNX "
                          f"({first})") from None
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    metadata = {"threshold": json.dumps(meta["threshold"]), "threshold_method": meta.get("threshold_method", ""),
                "model_name": meta["model_name"], "tag": meta["tag"], "model_config": json.dumps(meta["model_config"]),
                "normalization": json.dumps(meta["normalization"]),
                "calibration": json.dumps(calibrator.to_dict()), "label_space": json.dumps(space.to_dict()),
                "arcmil_version": __version__,
                **({"ensemble": json.dumps(meta["ensemble"])} if "ensemble" in meta else {})}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"arcmil.{key}", value
    write_new_file(out, lambda tmp: onnx.save(proto, tmp), overwrite=overwrite)
    return out
