"""The fit loop: seeding, AdamW with its learning-rate schedule, epochs with early stopping (the loss
comes from the data's label space: arcmil.labels)."""
from __future__ import annotations

import copy
import functools
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from arcmil.config import DECAY_SCOPES, LR_SCHEDULES, MONITORS, PRECISIONS, TrainConfig  # noqa: F401 (importable here)
from arcmil.distributed import World, select_device  # noqa: F401 (importable here, as before)
from arcmil.errors import ArcmilError, ConfigError
from arcmil.runstate import rng_state, set_rng_state
from arcmil.scoring import Evaluation, autocast, evaluate

NO_DECAY_NAMES = ("cls_token", "pos.table")  # learned tokens and position tables are not weights
# the training settings ``arcmil tune`` searches (format: see arcmil.models.config); the model's own beside its config
TRAIN_SEARCH_SPACE = {"lr": {"low": 1e-4, "high": 3e-3, "log": True},
                      "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
                      "epochs": {"low": 5, "high": 20}, "patience": {"low": 2, "high": 6}}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # torch.use_deterministic_algorithms would also import the compiler stack to set the compiler's own
    # flag (2 s per process); eager kernels read only this one, and runner_for sets both under --compile
    set_kernel_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_kernel_flag is None:  # a torch without it: the public call, import cost included
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        set_kernel_flag(True, warn_only=True)


def seed_dropout_for_rank(seed: int, world: World) -> None:
    """Under torchrun, give each rank its own torch RNG stream once the (identical) model is built:
    with one shared seed every rank would draw the same dropout masks for its different bags.
    A single process keeps its stream untouched."""
    if world.active:
        torch.manual_seed(int(np.random.SeedSequence([seed, world.rank]).generate_state(1)[0]))


def runner_for(model: nn.Module, cfg: "TrainConfig", world: World, device: torch.device) -> nn.Module:
    """The module the training loop calls: ``model`` itself, DDP-wrapped under torchrun, compiled
    when asked for. Weights live in ``model`` either way (its state_dict has no wrapper prefixes)."""
    runner = model
    if world.active:
        runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if not cfg.compile:
        return runner
    torch.use_deterministic_algorithms(True, warn_only=True)  # the compiler's flag too (see seed_everything)
    return torch.compile(runner, mode=cfg.compile_mode)


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """The learning-rate factor before optimizer step ``step`` (0-based): a linear warm-up to 1 over
    ``warmup_steps``, then a half cosine down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def decay_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW's parameter groups: one, decayed, for ``weight_decay_on='all'``; for 'weights', the weight
    matrices decayed and the rest (biases, LayerNorm scales, the CLS token, position tables) not."""
    if cfg.weight_decay_on == "all":
        return [{"params": list(model.parameters())}]
    named = list(model.named_parameters())
    decayed = [p for name, p in named if p.ndim >= 2 and not any(part in name for part in NO_DECAY_NAMES)]
    kept = [p for name, p in named if not any(p is q for q in decayed)]
    return [{"params": decayed}, {"params": kept, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """AdamW and the learning-rate schedule: 'cosine' (warm-up then cosine decay over the epoch
    budget, stepped after every batch) or 'plateau' (ReduceLROnPlateau on the monitored validation
    metric, stepped after every epoch)."""
    # fused: one kernel for all parameters instead of a Python loop over them (same update rule);
    # torch >= 2.4 has it for CPU and CUDA parameters
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(decay_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.lr_schedule == "cosine":
        factor = functools.partial(warmup_cosine, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
                                   total_steps=cfg.epochs * steps_per_epoch)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=MONITORS[cfg.monitor],
                                                           factor=cfg.lr_factor, patience=cfg.lr_patience)
    return optimizer, scheduler


def train_one_epoch(model, loader, criterion, optimizer, device, precision: str = "fp32",
                    batch_scheduler=None) -> float:
    """One pass over ``loader``; returns the mean training loss per bag (over all ranks).
    ``batch_scheduler`` (a per-step learning-rate schedule) is stepped after every batch."""
    model.train()
    criterion = criterion.to(device)
    # summed on the device in float64 (as Python floats would be; MPS has no float64), read once: no host
    # sync per step
    wide = torch.float64 if torch.device(device).type in ("cpu", "cuda") else torch.float32
    total, count = torch.zeros((), dtype=wide, device=device), 0
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, precision):
            logits, _ = model(batch.x, batch.mask)
        loss = criterion(logits.float(), batch.y)
        optimizer.zero_grad(set_to_none=True)
        (loss * batch.loss_scale).backward()
        optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        if batch.loss_scale:
            total += loss.detach().to(wide) * len(batch.y)
            count += len(batch.y)
    totals = loader.world.gather((total.item(), count))
    return sum(t for t, _ in totals) / sum(c for _, c in totals)


def _own_rng_state(saved, world: World) -> dict:
    """This rank's RNG state from a resume state's per-rank list (one dict: a state saved before ranks
    kept their own)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != world.size:
        raise ConfigError(f"resume.pt holds the RNG states of {len(states)} process(es) and {world.size} resume "
                          "it; resume with as many processes as the run started with")
    return states[world.rank]


@dataclass
class FitResult:
    """``best_val``: the validation bags as scored by the best state, and ``best_val_of`` which bags
    (their ids) under which normaliser (``validation_scores`` hands them to finalize instead of scoring
    again); None where that scoring is not the final model's own (compiled or DDP runner, or a best
    epoch from before a resume)."""

    best_epoch: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0
    best_val: Evaluation | None = None
    best_val_of: tuple | None = None

    def validation_scores(self, bags, normalizer) -> Evaluation | None:
        """``best_val`` if it scored exactly ``bags`` (a BagSet) under ``normalizer``, else None."""
        if self.best_val is None or self.best_val_of is None:
            return None
        ids, used = self.best_val_of
        return self.best_val if used == normalizer and np.array_equal(ids, bags.bag_ids) else None


def _val_metrics(val: Evaluation) -> dict:
    """The monitored figures: loss, ROC-AUC and PR-AUC (macro beyond binary: LabelSpace.metrics)."""
    if val.space.binary:
        return {"val_loss": val.loss, "val_roc_auc": float(roc_auc_score(val.labels, val.probs)),
                "val_pr_auc": float(average_precision_score(val.labels, val.probs))}
    metrics = val.space.metrics(val.labels, val.probs, val.space.tune_threshold(val.labels, val.probs, "fixed"))
    return {"val_loss": val.loss, "val_roc_auc": metrics["roc_auc"], "val_pr_auc": metrics["pr_auc"]}


def fit_estimator(model, train_loader, val_loader, criterion, device) -> FitResult:
    """A model fitted in one go by scikit-learn (``model.fit_bags``: arcmil.models.pooled_stats) on every
    training bag (``train_loader``: the training bags, scored in order); one history row (epoch 1) in
    ``train_model``'s format, so reports, searches and comparisons read it as any run."""
    start = time.perf_counter()
    model.fit_bags(train_loader)
    model.to(device)
    train = evaluate(model, train_loader, criterion, device)
    val = evaluate(model, val_loader, criterion, device)
    row = {"epoch": 1, "train_loss": train.loss, **_val_metrics(val), "lr": 0.0,
           "seconds": time.perf_counter() - start}
    return FitResult(1, [row], stopped_early=False, seconds=row["seconds"], best_val=val,
                     best_val_of=(val_loader.bs.bag_ids, val_loader.normalizer))


def train_model(model, train_loader, val_loader, criterion, optimizer, scheduler, cfg: TrainConfig,
                device, desc: str = "train", runner: nn.Module | None = None, resume: dict | None = None,
                on_epoch=None) -> FitResult:
    """Train up to ``cfg.epochs`` epochs, stop after ``cfg.patience`` epochs without improvement of
    ``cfg.monitor``, and leave the model holding its best state. ``runner``: the (DDP/compiled)
    module that computes, sharing ``model``'s weights.

    ``on_epoch(state)`` receives after every epoch everything needed to continue (weights, optimizer,
    scheduler, early-stopping state, RNG states, history); ``resume`` is such a state: training goes
    on from the epoch after it exactly as if it had never stopped."""
    runner = model if runner is None else runner
    sign = 1.0 if MONITORS[cfg.monitor] == "min" else -1.0
    best_score, best_state, best_epoch, waited, history, done = float("inf"), None, 0, 0, [], 0
    best_val = None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        train_loader.generator.set_state(resume["loader"])
        set_rng_state(_own_rng_state(resume["rng"], train_loader.world))
        best_score, best_state, best_epoch = resume["best_score"], resume["best_state"], resume["best_epoch"]
        waited, history, done = resume["waited"], resume["history"], resume["epoch"]
    start = time.perf_counter()
    show = cfg.progress and train_loader.world.is_main
    per_batch = scheduler if cfg.lr_schedule == "cosine" else None  # else stepped once per epoch
    # a bar only on a terminal: elsewhere (CI, nohup, a log file) its redraws would garble the log lines
    bar = tqdm(range(done + 1, cfg.epochs + 1), desc=desc, unit="epoch", leave=False,
               disable=not (show and sys.stderr.isatty()))
    for epoch in bar:
        if waited >= cfg.patience:
            break
        tic = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]  # at the epoch's start (per-batch schedules move it)
        train_loss = train_one_epoch(runner, train_loader, criterion, optimizer, device, cfg.precision, per_batch)
        val = evaluate(runner, val_loader, criterion, device, cfg.precision)
        if not (math.isfinite(train_loss) and np.isfinite(val.logits).all()):
            raise ArcmilError(f"training diverged in epoch {epoch} (training loss {train_loss:.4g}, non-finite "
                              f"validation scores: {int((~np.isfinite(val.logits)).sum())}); lower the learning "
                              f"rate (lr={cfg.lr:g})")
        row = {"epoch": epoch, "train_loss": train_loss, **_val_metrics(val), "lr": lr}
        if per_batch is None:
            scheduler.step(row[cfg.monitor])
        row["seconds"] = time.perf_counter() - tic
        history.append(row)
        score = sign * row[cfg.monitor]
        improved = score < best_score
        if improved:
            best_score, best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            best_val = val if runner is model else None
        else:
            waited += 1
        bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{row['val_loss']:.4f}")
        if show:
            tqdm.write(f"[{desc}] epoch {epoch:>2}  train_loss {train_loss:.4f}  val_loss {row['val_loss']:.4f}  "
                       f"val_roc_auc {row['val_roc_auc']:.4f}  lr {row['lr']:.2e}{'  *' if improved else ''}")
        # every rank's own RNG state (dropout draws differ per rank); a collective, so every rank calls it
        rngs = train_loader.world.gather(rng_state()) if on_epoch or train_loader.world.active else None
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "loader": train_loader.generator.get_state(),
                      "rng": rngs, "best_score": best_score, "best_state": best_state,
                      "best_epoch": best_epoch, "waited": waited, "history": history})
    model.load_state_dict(best_state)
    return FitResult(best_epoch, history, stopped_early=len(history) < cfg.epochs,
                     seconds=time.perf_counter() - start, best_val=best_val,
                     best_val_of=(val_loader.bs.bag_ids, val_loader.normalizer))
