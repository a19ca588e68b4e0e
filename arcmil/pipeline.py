"""One path from bags to a finished run, walked by the CLI, the Python API and the experiment scripts:

seed -> prepare_data (split, normalise) -> make_loaders -> model -> loss (the label space's: weighted
BCE for binary) + optimizer -> train_model -> finalize (validation threshold, test report, predictions).
``TrainConfig`` says how a model is trained, ``EvalConfig`` how it is evaluated.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import sklearn
import torch
from torch import nn

from arcmil import __version__
from arcmil.calibration import calibration_metrics, fit_calibrator
from arcmil.checks import check_ensemble
from arcmil.config import SCORE_BATCH_SIZE, EvalConfig, TrainConfig
from arcmil.data import (
    SPLITS,
    BagSet,
    Normalizer,
    ResidentBags,
    assign_split,
    make_loader,
    scoring_loader,
    split_parts,
)
from arcmil.distributed import SINGLE, World, select_device
from arcmil.errors import ArcmilError
from arcmil.labels import LabelSpace
from arcmil.metrics import bootstrap_ci
from arcmil.models import build_model
from arcmil.models.ensemble import Ensemble, member_seeds, model_tag
from arcmil.scoring import Evaluation, check_fits, predictions_frame, score_bags, wide_weights
from arcmil.train import (
    FitResult,
    fit_estimator,
    make_optimizer,
    runner_for,
    seed_dropout_for_rank,
    seed_everything,
    train_model,
)


@dataclass
class PreparedData:
    """bags: the loaded bags with their split; parts: their train/val/test BagSets (raw windows:
    ``normalizer`` is applied by the loaders, batch by batch)."""

    bags: BagSet
    parts: dict[str, BagSet]
    normalizer: Normalizer
    split_origin: str


def prepare_data(bags: BagSet, cfg: TrainConfig, evaluation: EvalConfig = EvalConfig(),
                 splits: tuple[str, ...] = SPLITS) -> PreparedData:
    """The bags' own split or a stratified one drawn with the training seed; the normaliser fitted on train.
    ``splits``: the parts to use (a search uses only train and val)."""
    origin = "file" if bags.split is not None else f"stratified 70/15/15, seed {cfg.seed}"
    bags = assign_split(bags, cfg.seed)
    raw = split_parts(bags, splits)
    return PreparedData(bags, raw, Normalizer.fit(evaluation.normalize, raw["train"]), origin)


def make_loaders(data: PreparedData, cfg: TrainConfig, world: World = SINGLE, device="cpu") -> dict:
    """'train' is shuffled with the run's seed in batches of ``cfg.batch_size``; val and test are scored
    (see scoring_loader) in batches of up to SCORE_BATCH_SIZE bags, as ``predict`` scores, whatever the
    training batch (larger batches score faster; a bag's score moves only by float rounding). Training
    and validation bags that fit on a GPU ``device`` stay there (ResidentBags)."""
    held = [name for name in ("train", "val") if name in data.parts]
    on = device if ResidentBags.fits([data.parts[name] for name in held], device) else None
    return {name: make_loader(part, cfg.batch_size, shuffle=True, seed=cfg.seed, normalizer=data.normalizer,
                              bucket=cfg.bucket_by_length, world=world, resident_on=on)
            if name == "train" else scoring_loader(part, SCORE_BATCH_SIZE, data.normalizer, world,
                                                   on if name in held else None)
            for name, part in data.parts.items()}


@dataclass
class RunResult:
    """One trained and evaluated model. ``validation`` / ``test``: metrics at ``threshold`` (tuned on
    validation) and the loss, ``test['ci']`` the bootstrap intervals; ``history``: one row per epoch;
    ``parts``: each split's bags; ``evaluations``: each scored split's scores (see ``finalize``);
    ``predictions``: one row per scored bag. An ensemble (``model`` an arcmil.models.ensemble.Ensemble)
    has one ``best_epoch`` and ``stopped_early`` per member and its members' epochs in ``history``
    (each row with its ``member``).
    ``to_dict()`` is what stage3_<model>_results.json holds."""

    model_name: str
    model: nn.Module
    normalizer: Normalizer
    calibrator: object  # arcmil.calibration: Calibrator, or the label space's family
    threshold: float | list[float] | None  # LabelSpace.tune_threshold
    validation: dict
    test: dict
    history: list[dict]
    best_epoch: int | list[int]
    stopped_early: bool | list[bool]
    train_seconds: float
    train_config: TrainConfig
    eval_config: EvalConfig
    data: dict
    environment: dict
    predictions: pd.DataFrame
    evaluations: dict[str, Evaluation]
    parts: dict[str, BagSet]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def tag(self) -> str:
        return model_tag(self.model)

    @property
    def epochs_run(self) -> int | list[int]:
        """Epochs trained (one count per member for an ensemble)."""
        if isinstance(self.model, Ensemble):
            return [sum(row["member"] == i for row in self.history) for i in range(len(self.model.members))]
        return len(self.history)

    @property
    def label_space(self) -> LabelSpace:
        return self.parts["train"].label_space

    def to_dict(self) -> dict:
        return {
            "tag": self.tag, "model": self.model_name, "created": self.created,
            "model_config": asdict(self.model.config), "train_config": asdict(self.train_config),
            "eval_config": asdict(self.eval_config), "data": self.data,
            "threshold": {"value": self.threshold, "method": self.eval_config.threshold_method},
            **({} if self.label_space.binary else {"label_space": self.label_space.to_dict()}),
            "calibration": self.calibrator.to_dict(),
            "validation": self.validation, "test": self.test, "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "train_seconds": self.train_seconds,
            "n_parameters": sum(p.numel() for p in self.model.parameters()), "history": self.history,
            "environment": self.environment,
            **({"ensemble": self.model.record()} if isinstance(self.model, Ensemble) else {}),
        }


def environment() -> dict:
    return {"arcmil": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scikit_learn": sklearn.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads()}


def finalize(model_name: str, model: nn.Module, data: PreparedData, criterion, fit: FitResult, cfg: TrainConfig,
             evaluation: EvalConfig, device, world: World = SINGLE) -> RunResult:
    """Calibrate and tune the threshold on validation, report test metrics (with bootstrap intervals);
    predictions of the validation and test bags (and the training bags with ``evaluation.score_train``)."""
    scored = [name for name in SPLITS if name != "train" or evaluation.score_train]
    raw = {name: split_scores(name, model, data, fit, device, cfg.precision, world, criterion) for name in scored}
    for name, scores in raw.items():
        bad = int((~np.isfinite(scores.logits)).any(axis=tuple(range(1, scores.logits.ndim))).sum())
        if bad:
            raise ArcmilError(f"the model's scores of {bad} {name} bag(s) are not finite (their windows hold values "
                              "the model overflows on); check those bags or use --normalize l2")
    space = data.bags.label_space
    # an ensemble's members are calibrated each, its mean is not mapped again (nor reported as uncalibrated)
    ensemble = getattr(model, "calibrated", False)
    method = "none" if ensemble else evaluation.calibrate
    calibrator = fit_calibrator(method, raw["val"].labels, raw["val"].logits, space)
    evaluations = {name: calibrator.apply(ev) for name, ev in raw.items()}
    val, test = evaluations["val"], evaluations["test"]
    threshold = space.tune_threshold(val.labels, val.probs, evaluation.threshold_method, evaluation.fixed_threshold)
    test_metrics = space.metrics(test.labels, test.probs, threshold)
    test_metrics["ci"] = bootstrap_ci(test.labels, test.probs, threshold, n_boot=evaluation.n_bootstrap,
                                      seed=cfg.seed, space=space)
    wide = wide_weights(model.config, *(data.parts[name] for name in scored))
    predictions = pd.concat([predictions_frame(data.parts[name], evaluations[name], threshold, name, wide)
                             for name in scored], ignore_index=True)
    summary = {**data.bags.summary(), "split_origin": data.split_origin, "normalization": evaluation.normalize,
               "splits": {name: part.label_space.split_summary(part.labels) for name, part in data.parts.items()}}
    return RunResult(
        model_name, model, data.normalizer, calibrator, threshold,
        validation={**space.metrics(val.labels, val.probs, threshold), "loss": val.loss,
                    **_calibration_report(raw["val"], val, not ensemble)},
        test={**test_metrics, "loss": test.loss, **_calibration_report(raw["test"], test, not ensemble)},
        history=fit.history, best_epoch=fit.best_epoch, stopped_early=fit.stopped_early, train_seconds=fit.seconds,
        train_config=cfg, eval_config=evaluation, data=summary,
        environment={**environment(), "processes": world.size, "device": str(device), "precision": cfg.precision},
        predictions=predictions, evaluations=evaluations, parts=data.parts)


def split_scores(name: str, model: nn.Module, data: PreparedData, fit: FitResult, device, precision: str,
                 world: World = SINGLE, criterion=None) -> Evaluation:
    """The scores of split ``name`` by the trained ``model``: for validation the best epoch's, which are
    the model's own (``FitResult.validation_scores``), else scored now."""
    kept = fit.validation_scores(data.parts["val"], data.normalizer) if name == "val" else None
    if kept is not None:
        return kept
    return score_bags(model, data.parts[name], data.normalizer, device=device, precision=precision, world=world,
                      criterion=criterion)


def _calibration_report(raw: Evaluation, calibrated: Evaluation, with_raw: bool = True) -> dict:
    """brier and ece of the calibrated probabilities, and (``with_raw``) of the raw sigmoid ones
    (``*_uncalibrated``)."""
    after = calibration_metrics(calibrated.labels, calibrated.probs, calibrated.space)
    if not with_raw:
        return after
    before = calibration_metrics(raw.labels, raw.probs, raw.space)
    return {**after, **{f"{key}_uncalibrated": value for key, value in before.items()}}


@dataclass
class Trained:
    """A model after ``train_run``: its data, loss, fit record and device, ready for ``finalize``."""

    model: nn.Module
    data: PreparedData
    criterion: nn.Module
    fit: FitResult
    device: torch.device


def train_run(bags: BagSet, model_name: str, cfg: TrainConfig = TrainConfig(), world: World = SINGLE, *,
              evaluation: EvalConfig = EvalConfig(), splits: tuple[str, ...] = SPLITS, resume: dict | None = None,
              on_epoch=None, data: PreparedData | None = None, **model_overrides) -> Trained:
    """Train one registered model on ``bags``' training part, stopped early on validation (nothing
    scored past validation: ``splits=('train', 'val')`` runs without a test part). ``data``: the split
    and normaliser to train on (default: drawn with ``cfg.seed``)."""
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    if data is None:
        data = prepare_data(bags, cfg, evaluation, splits)
    model = build_model(model_name, input_dim=bags.dim, **bags.label_space.model_settings, **model_overrides).to(device)
    seed_dropout_for_rank(cfg.seed, world)
    check_fits(bags, model.config)
    criterion = bags.label_space.criterion(data.parts["train"].labels)
    if hasattr(model, "fit_bags"):  # a classical model: fitted by scikit-learn on every bag, every rank alike
        fit = fit_estimator(model, *(scoring_loader(data.parts[name], SCORE_BATCH_SIZE, data.normalizer)
                                     for name in ("train", "val")), criterion, device)
        return Trained(model, data, criterion, fit, device)
    loaders = make_loaders(data, cfg, world, device)
    optimizer, scheduler = make_optimizer(model, cfg, len(loaders["train"]))
    fit = train_model(model, loaders["train"], loaders["val"], criterion, optimizer, scheduler, cfg, device,
                      desc=model.config.tag(), runner=runner_for(model, cfg, world, device), resume=resume,
                      on_epoch=on_epoch)
    return Trained(model, data, criterion, fit, device)


def train_ensemble(bags: BagSet, model_name: str, cfg: TrainConfig, world: World = SINGLE, *,
                   evaluation: EvalConfig = EvalConfig(), on_epoch=None, **model_overrides) -> Trained:
    """``cfg.ensemble`` members of one model on the run's one split (drawn with ``cfg.seed``), each trained
    as ``train_run`` trains it with its own seed (``member_seeds``: member 0 is the single model of the
    same seed) and calibrated on its own validation scores (``evaluation.calibrate``). ``on_epoch`` receives
    each member's per-epoch states with its index (``"member"``)."""
    check_ensemble(model_name, cfg.ensemble)
    data = prepare_data(bags, cfg, evaluation)
    seeds = member_seeds(cfg.seed, cfg.ensemble)
    members, calibrators, fits = [], [], []
    for i, seed in enumerate(seeds):
        member_epoch = None if on_epoch is None else (lambda state, i=i: on_epoch({**state, "member": i}))
        t = train_run(bags, model_name, replace(cfg, seed=seed, ensemble=1), world, evaluation=evaluation, data=data,
                      on_epoch=member_epoch, **model_overrides)
        val = split_scores("val", t.model, data, t.fit, t.device, cfg.precision, world)
        calibrators.append(fit_calibrator(evaluation.calibrate, val.labels, val.logits, bags.label_space))
        members.append(t.model)
        fits.append(t.fit)
    model = Ensemble(members, calibrators, bags.label_space, seeds)
    history = [{"member": i, **row} for i, f in enumerate(fits) for row in f.history]
    fit = FitResult([f.best_epoch for f in fits], history, [f.stopped_early for f in fits],
                    sum(f.seconds for f in fits))
    return Trained(model, data, t.criterion, fit, t.device)


def run_experiment(bags: BagSet, model_name: str, cfg: TrainConfig = TrainConfig(), world: World = SINGLE, *,
                   evaluation: EvalConfig = EvalConfig(), resume: dict | None = None, on_epoch=None,
                   **model_overrides) -> RunResult:
    """Train and evaluate one registered model on ``bags`` (the whole pipeline, nothing written), or an
    ensemble of ``cfg.ensemble`` of its members (``train_ensemble``).
    ``world``: under torchrun, this rank's place; every rank returns the same result.
    ``resume`` / ``on_epoch``: continue from, and report, per-epoch training states (see train_model);
    an ensemble reports its members' (``train_ensemble``) and cannot resume (trained again from its first
    member)."""
    if cfg.ensemble > 1:
        if resume is not None:
            raise ArcmilError("an ensemble's training has no per-epoch states to resume from")
        t = train_ensemble(bags, model_name, cfg, world, evaluation=evaluation, on_epoch=on_epoch,
                           **model_overrides)
    else:
        t = train_run(bags, model_name, cfg, world, evaluation=evaluation, resume=resume, on_epoch=on_epoch,
                      **model_overrides)
    return finalize(model_name, t.model, t.data, t.criterion, t.fit, cfg, evaluation, t.device, world)
