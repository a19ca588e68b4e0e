"""An ensemble of K trained members of one registered model, averaged in calibrated-probability space.

Each member is trained with its own seed on the run's one split and calibrated on its validation
scores; the ensemble's probability is the mean of the members' calibrated probabilities. Its
``forward`` maps that mean back to logits (log-odds per output; log-probabilities for one softmax),
so every consumer of a model (scoring, thresholds, ``predict``, ONNX export, explanations) takes it
as it takes one model, with no calibrator on top (``calibrated``).
"""
from __future__ import annotations

import torch
from torch import nn

from arcmil.labels import LabelSpace

PROBABILITY_FLOOR = 1e-7  # a mean probability of exactly 0 or 1 (an isotonic map) keeps finite logits


class Ensemble(nn.Module):
    """``members``: K models of one config; ``calibrators``: each member's map (arcmil.calibration),
    fitted on the validation split; ``seeds``: the seed each member was trained with."""

    calibrated = True  # its probabilities are calibrated already: nothing is fitted on top (pipeline.finalize)

    def __init__(self, members: list[nn.Module], calibrators: list, space: LabelSpace, seeds: list[int]):
        super().__init__()
        if len(members) < 2 or len(calibrators) != len(members) or len(seeds) != len(members):
            raise ValueError(f"an ensemble needs >= 2 members with a calibrator and a seed each, got "
                             f"{len(members)}, {len(calibrators)} and {len(seeds)}")
        self.members = nn.ModuleList(members)
        self.calibrators, self.space, self.seeds = list(calibrators), space, list(seeds)
        self.config = members[0].config  # the members' settings: input_dim, n_outputs, positions ...

    def tag(self) -> str:
        return f"{self.config.tag()}_ens{len(self.members)}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits of the mean calibrated probability ((B,) or (B, K)) and the
        members' mean window weights ((B, N), or (B, K, N) with one attention per class)."""
        probs, weights = [], []
        for member, calibrator in zip(self.members, self.calibrators):
            logits, w = member(x, mask)
            probs.append(calibrator.probabilities(logits.float()))
            weights.append(w)
        mean = torch.stack(probs).mean(0).clamp(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        logits = mean.log() if self.space.kind == "multiclass" else torch.logit(mean)
        return logits.to(x.dtype), torch.stack(weights).mean(0)

    def record(self) -> dict:
        """Plain data for checkpoints and results (the weights are in the state dict)."""
        return {"size": len(self.members), "seeds": self.seeds,
                "calibrations": [calibrator.to_dict() for calibrator in self.calibrators]}


def model_tag(model: nn.Module) -> str:
    """A model's name in runs and tables: its config's tag, with ``_ens{K}`` for an ensemble of K."""
    return model.tag() if isinstance(model, Ensemble) else model.config.tag()
