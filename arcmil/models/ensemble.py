"""An ensemble of K trained members of one registered model, averaged in calibrated-probability space.

Each member is trained with its own seed on the run's one split and calibrated on its validation
scores; the ensemble's probability is the mean of the members' calibrated probabilities. Its
``forward`` maps that mean back to logits (log-odds per output; log-probabilities for one softmax),
so every consumer of a model (scoring, thresholds, ``predict``, ONNX export, explanations) takes it
as it takes one model, with no calibrator on top (``calibrated``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from arcmil.config import ensemble_name
from arcmil.labels import LabelSpace


def member_seeds(seed: int, size: int) -> list[int]:
    """The seeds of an ensemble's members: ``seed`` first (member 0 is the single model of that seed), the
    others drawn from (seed, i), so that ensembles of neighbouring seeds share no member."""
    return [seed] + [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(1, size)]


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
        return ensemble_name(self.config.tag(), len(self.members))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), mask: (B, N) -> logits of the mean calibrated probability ((B,) or (B, K)) and the
        members' mean window weights ((B, N), or (B, K, N) with one attention per class).

        The mean is taken in log space (log-sum-exp of the members' log-probabilities), so confident bags
        keep distinct scores and non-zero gradients where a probability would round to 0 or 1."""
        logits, weights = [], []
        for member, calibrator in zip(self.members, self.calibrators):
            z, w = member(x, mask)
            logits.append(calibrator.calibrated_logits(z.float()))
            weights.append(w)
        z = torch.stack(logits)  # (M, B) or (M, B, K)
        if self.space.kind == "multiclass":  # log of the mean class distribution
            out = torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - math.log(len(self.members))
        else:  # log-odds of the mean probability: log mean p - log mean (1 - p)
            out = torch.logsumexp(F.logsigmoid(z), dim=0) - torch.logsumexp(F.logsigmoid(-z), dim=0)
        return out.to(x.dtype), torch.stack(weights).mean(0)

    def record(self) -> dict:
        """Plain data for checkpoints and results (the weights are in the state dict)."""
        return {"size": len(self.members), "seeds": self.seeds,
                "calibrations": [calibrator.to_dict() for calibrator in self.calibrators]}


def model_tag(model: nn.Module) -> str:
    """A model's name in runs and tables: its config's tag, with ``_ens{K}`` for an ensemble of K."""
    return model.tag() if isinstance(model, Ensemble) else model.config.tag()
