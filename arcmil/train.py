"""The fit loop: seeding, weighted BCE, AdamW + ReduceLROnPlateau, epochs with early stopping."""
from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from arcmil.data.prepare import NORMALIZATIONS
from arcmil.errors import ConfigError
from arcmil.metrics import THRESHOLD_METHODS

MONITORS = {"val_loss": "min", "val_roc_auc": "max", "val_pr_auc": "max"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything but the model block; identical for every model in a comparison."""

    seed: int = 0
    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    patience: int = 3
    monitor: str = "val_loss"
    lr_factor: float = 0.5
    lr_patience: int = 1
    normalize: str = "l2"
    threshold_method: str = "f1"
    fixed_threshold: float = 0.5
    n_bootstrap: int = 1000
    bucket_by_length: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        choices = {"monitor": tuple(MONITORS), "normalize": NORMALIZATIONS, "threshold_method": THRESHOLD_METHODS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def weighted_bce(train_labels: np.ndarray) -> nn.BCEWithLogitsLoss:
    """BCE with pos_weight = n_neg / n_pos of the training split."""
    n_pos = float(np.sum(train_labels))
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(train_labels) - n_pos) / n_pos))


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience)
    return optimizer, scheduler


def train_one_epoch(model, loader, criterion, optimizer, device) -> float:
    """One pass over ``loader``; returns the mean training loss per bag."""
    model.train()
    criterion = criterion.to(device)
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        logits, _ = model(batch.x, batch.mask)
        loss = criterion(logits, batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch.y)
        count += len(batch.y)
    return total / count


@dataclass
class Evaluation:
    """probs: (B,) sigmoid scores in loader order; weights: one (n_i,) array per bag; loss is None
    for unlabelled data."""

    probs: np.ndarray
    labels: np.ndarray | None
    weights: list[np.ndarray]
    index: np.ndarray
    loss: float | None = None


@torch.inference_mode()
def evaluate(model, loader, criterion=None, device="cpu") -> Evaluation:
    """Score every bag in eval mode (dropout off), restoring the model's previous mode after."""
    was_training = model.training
    model.eval()
    probs, labels, weights, index, total = [], [], [], [], 0.0
    for batch in loader:
        batch = batch.to(device)
        logits, w = model(batch.x, batch.mask)
        probs.append(torch.sigmoid(logits).cpu())
        lengths = batch.mask.sum(dim=1).tolist()
        weights.extend(row[:n].numpy() for row, n in zip(w.float().cpu(), lengths))
        index.append(batch.index)
        if batch.y is not None:
            labels.append(batch.y.cpu())
            if criterion is not None:
                total += criterion.to(device)(logits, batch.y).item() * len(batch.y)
    model.train(was_training)
    labels = torch.cat(labels).numpy().astype(int) if labels else None
    loss = total / len(labels) if labels is not None and criterion is not None else None
    return Evaluation(torch.cat(probs).numpy().astype(np.float64), labels, weights, torch.cat(index).numpy(), loss)


@dataclass
class FitResult:
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0


def _val_metrics(val: Evaluation) -> dict:
    return {"val_loss": val.loss, "val_roc_auc": float(roc_auc_score(val.labels, val.probs)),
            "val_pr_auc": float(average_precision_score(val.labels, val.probs))}


def train_model(model, train_loader, val_loader, criterion, optimizer, scheduler, cfg: TrainConfig,
                device, desc: str = "train") -> FitResult:
    """Train up to ``cfg.epochs`` epochs, stop after ``cfg.patience`` epochs without improvement of
    ``cfg.monitor``, and leave the model holding its best state."""
    sign = 1.0 if MONITORS[cfg.monitor] == "min" else -1.0
    best_score, best_state, best_epoch, waited = float("inf"), None, 0, 0
    history, start = [], time.perf_counter()
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in bar:
        tic = time.perf_counter()
        train_loss = train_one_epoch(model, train_loader, criterion, optimizer, device)
        row = {"epoch": epoch, "train_loss": train_loss, **_val_metrics(evaluate(model, val_loader, criterion, device)),
               "lr": optimizer.param_groups[0]["lr"]}
        scheduler.step(row["val_loss"])
        row["seconds"] = time.perf_counter() - tic
        history.append(row)
        score = sign * row[cfg.monitor]
        improved = score < best_score
        if improved:
            best_score, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
        bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{row['val_loss']:.4f}")
        if cfg.progress:
            tqdm.write(f"[{desc}] epoch {epoch:>2}  train_loss {train_loss:.4f}  val_loss {row['val_loss']:.4f}  "
                       f"val_roc_auc {row['val_roc_auc']:.4f}  lr {row['lr']:.2e}{'  *' if improved else ''}")
        if waited >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, history, stopped_early=len(history) < cfg.epochs,
                     seconds=time.perf_counter() - start)
