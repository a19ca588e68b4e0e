"""Self-describing checkpoints: model name, config, label space, threshold, normalisation and
calibration beside the weights.

Saved with ``torch.save`` as a dict of tensors and plain data, so loading needs no unpickling of
code (``torch.load(weights_only=True)``) and rebuilds the model with no flags.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from arcmil import __version__
from arcmil.calibration import Calibrator, calibrator_from_dict
from arcmil.config import NORMALIZATIONS
from arcmil.data.prepare import Normalizer
from arcmil.errors import ArcmilError
from arcmil.labels import BINARY, LabelSpace
from arcmil.models import build_model, model_names
from arcmil.models.ensemble import Ensemble, model_tag

FORMAT = "arcmil-checkpoint-1"
REQUIRED = ("format", "model_name", "model_config", "state_dict", "threshold", "normalization")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_name: str, *, threshold,
                    threshold_method: str, normalizer: Normalizer, calibrator=Calibrator(),
                    label_space: LabelSpace = BINARY, extra: dict | None = None) -> Path:
    """``threshold``: LabelSpace.tune_threshold's (a float for binary); ``calibrator``: the space's family.
    An ensemble is saved as its members' model (name, config) with its ``ensemble`` record (seeds, member
    calibrations) beside the members' weights."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "arcmil_version": __version__,
        "model_name": model_name,
        "model_config": asdict(model.config),
        "tag": model_tag(model),
        "label_space": label_space.to_dict(),
        "threshold": threshold if threshold is None or isinstance(threshold, list) else float(threshold),
        "threshold_method": threshold_method,
        "normalization": normalizer.to_dict(),
        "calibration": calibrator.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **({"ensemble": model.record()} if isinstance(model, Ensemble) else {}),
        **(extra or {}),
    }
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model (in eval mode) and return it with the checkpoint's metadata."""
    path = Path(path)
    if not path.is_file():
        raise ArcmilError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArcmilError(f"{path}: refused: the checkpoint holds pickled code, not just weights ({first})") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ArcmilError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
    missing = [key for key in REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing or payload.get("format") != FORMAT:
        raise ArcmilError(f"{path}: not an arcmil checkpoint (missing {', '.join(missing) or 'format ' + FORMAT})")
    model = _rebuild(path, payload)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def _rebuild(path: Path, payload: dict) -> nn.Module:
    """The model the checkpoint describes, with its weights; every field checked against the others."""
    name, config = payload["model_name"], payload["model_config"]
    if name not in model_names():
        raise ArcmilError(f"{path}: model {name!r} is not a registered model of this arcmil "
                          f"({', '.join(model_names())})")
    try:  # absent in checkpoints from before label spaces: binary
        space = LabelSpace.from_dict(payload.get("label_space"))
    except ArcmilError as exc:
        raise ArcmilError(f"{path}: {exc}") from None
    try:
        model = build_model(name, **config)
    except (ArcmilError, TypeError, ValueError, KeyError) as exc:
        raise ArcmilError(f"{path}: model_config does not describe a {name} ({exc})") from None
    if "ensemble" in payload:
        model = _ensemble(path, payload["ensemble"], name, config, space)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ArcmilError(f"{path}: weights do not fit a {name} with the stored config ({detail})") from None
    if model.config.n_outputs != space.n_outputs:
        raise ArcmilError(f"{path}: the model has {model.config.n_outputs} outputs, its {space.kind} label space "
                          f"{space.n_outputs}")
    space.check_threshold(payload["threshold"], str(path))
    norm = payload["normalization"]
    if not isinstance(norm, dict) or norm.get("kind") not in NORMALIZATIONS:
        raise ArcmilError(f"{path}: unknown normalization {norm!r} (expected kind in {', '.join(NORMALIZATIONS)})")
    if norm["kind"] == "standardize" and not (len(norm.get("mean") or ()) == len(norm.get("std") or ())
                                              == config["input_dim"]):
        raise ArcmilError(f"{path}: standardize statistics have {len(norm.get('mean') or ())} features, the model "
                          f"input_dim is {config['input_dim']}")
    try:
        calibrator_from_dict(payload.get("calibration"), space)  # absent in checkpoints from before calibration
    except ArcmilError as exc:
        raise ArcmilError(f"{path}: {exc}") from None
    return model


def _ensemble(path: Path, record, name: str, config: dict, space: LabelSpace) -> Ensemble:
    """The ensemble a checkpoint's ``ensemble`` record describes (weights not loaded yet)."""
    fields = ("size", "seeds", "calibrations")
    if not (isinstance(record, dict) and all(key in record for key in fields)):
        raise ArcmilError(f"{path}: the ensemble record must be a mapping with {', '.join(fields)}, "
                          f"got {record!r:.200}")
    size, seeds, calibrations = (record[key] for key in fields)
    if not (isinstance(size, int) and size >= 2 and isinstance(seeds, list) and isinstance(calibrations, list)
            and len(seeds) == len(calibrations) == size and all(isinstance(s, int) for s in seeds)):
        raise ArcmilError(f"{path}: the ensemble record needs size >= 2 and that many integer seeds and "
                          f"calibrations, got size {size!r}, seeds {seeds!r:.100}, {type(calibrations).__name__} "
                          "calibrations")
    try:
        calibrators = [calibrator_from_dict(c, space) for c in calibrations]
    except (ArcmilError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ArcmilError(f"{path}: an ensemble member's calibration is not valid ({exc})") from None
    return Ensemble([build_model(name, **config) for _ in calibrations], calibrators, space, seeds)
