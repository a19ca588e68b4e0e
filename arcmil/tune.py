"""Hyper-parameter search with Optuna on training data only (``arcmil tune``, ``cv --tune``, ``compare --tune``).

A search never sees a test bag: the test part of the split is removed before anything else. Each
trial trains on the training part and is scored by the validation ROC-AUC at its best epoch (the
epoch early stopping keeps), or, with ``inner_folds``, by the mean held-out ROC-AUC of a stratified
inner k-fold CV of the training and validation bags. TPE sampler seeded with the training seed,
median pruner on the per-epoch (or per-inner-fold) score. A study lives in an Optuna storage (a
SQLite file in the run directory unless a database URL is given), so an interrupted search resumes
and several processes or machines can fill one study. The best configuration is then trained once
on the full split and scored on the test part, as ``arcmil train`` would.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from arcmil.data import BagSet, assign_split
from arcmil.data.prepare import cv_splits
from arcmil.distributed import SINGLE, World
from arcmil.errors import ArcmilError, ConfigError
from arcmil.models import get_entry, make_config
from arcmil.models.registry import closest, fitted_by_estimator
from arcmil.pipeline import EvalConfig, RunResult, run_experiment, train_run
from arcmil.settings import COMMAND_KEYS, EVAL_FIELDS, MODEL_FIELDS, TRAIN_FIELDS, SearchConfig, read_mapping, resolve
from arcmil.train import TRAIN_SEARCH_SPACE, TrainConfig

PRUNER_WARMUP_STEPS = 2  # no pruning on the first two reports (steps 0 and 1): early epochs' scores say little


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("hyper-parameter search needs Optuna: pip install 'arcmil[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_pruner():
    """Optuna's median pruner; a trial's reports are steps 0, 1, ... (epochs or inner folds finished
    before), so the first PRUNER_WARMUP_STEPS of them are never pruned."""
    return _import_optuna().pruners.MedianPruner(n_warmup_steps=PRUNER_WARMUP_STEPS)


def search_space(model_name: str, overrides: dict, space_file: str | None = None) -> dict[str, dict]:
    """The parameters searched for ``model_name``: the training ranges (not for a model fitted by
    scikit-learn) and the model's (beside its config), less the variant's preset and those that do not matter for
    this config, then the ``space_file`` YAML (name: {low, high[, log | step]} or {choices}; null removes a parameter; a
    setting of other models only, or one the variant fixes (its preset, e.g. pool for
    transformer_mil_topk), is skipped, so one file can serve a comparison)."""
    entry, config = get_entry(model_name), make_config(model_name, **overrides)
    model_space = {name: spec for name, spec in config.SEARCH_SPACE.items()
                   if name not in entry.preset and config.SEARCH_WHEN.get(name, lambda c: True)(config)}
    by_estimator = fitted_by_estimator(model_name)  # no epochs, no learning rate to search
    space = {**({} if by_estimator else TRAIN_SEARCH_SPACE), **model_space}
    if space_file:
        own = {f.name for f in dataclasses.fields(config)}
        for name, spec in read_mapping(space_file, "search space", "setting: {low, high[, log]} or {choices}").items():
            if name not in TRAIN_FIELDS and name not in MODEL_FIELDS:
                raise ConfigError(f"{space_file}: {name!r} is not a training or model setting"
                                  f"{closest(str(name), [*TRAIN_FIELDS, *MODEL_FIELDS])}")
            if name == "ensemble":  # trials are single models; only the final model is an ensemble
                raise ConfigError(f"{space_file}: ensemble is not searched; give --ensemble K for the final model")
            if (name in MODEL_FIELDS and (name not in own or name in entry.preset)) or (
                    by_estimator and name in TRAIN_FIELDS):
                continue
            if spec is None:
                space.pop(name, None)
            else:
                space[name] = _checked_spec(space_file, name, spec)
    return space


def check_search(search: SearchConfig, overrides: dict[str, dict]) -> None:
    """Before a run writes anything: not under torchrun, Optuna installed, each model's space valid."""
    from arcmil.distributed import launched_by_torchrun

    if launched_by_torchrun():  # every rank would run the same trials into one study
        raise ConfigError("a hyper-parameter search runs in one process, not under torchrun; to search in "
                          "parallel, start several processes on one --storage database")
    _import_optuna()
    for name, model_overrides in overrides.items():
        search_space(name, model_overrides, search.space)


def _checked_spec(path: str, name: str, spec) -> dict:
    if isinstance(spec, dict) and set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
        return spec
    if (isinstance(spec, dict) and {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}
            and all(isinstance(spec.get(k, 1), (int, float)) for k in ("low", "high", "step"))
            and spec["low"] < spec["high"] and not (spec.get("log") and "step" in spec)):
        return spec
    raise ConfigError(f"{path}: {name!r} expects {{low: L, high: H[, log: true | step: S]}} with L < H or "
                      f"{{choices: [...]}}, got {spec!r}")


def _suggest(trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    kind = TRAIN_FIELDS.get(name) or MODEL_FIELDS[name]
    log, step = spec.get("log", False), spec.get("step")
    if kind is int:
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=log, step=int(step or 1))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=log, step=step)


def split_settings(params: dict, cfg: TrainConfig, overrides: dict) -> tuple[TrainConfig, dict]:
    """A trial's (or the best) parameters merged into the training config and the model overrides."""
    train = {k: v for k, v in params.items() if k in TRAIN_FIELDS}
    return replace(cfg, **train), {**overrides, **{k: v for k, v in params.items() if k not in TRAIN_FIELDS}}


def search_bags(bags: BagSet, seed: int) -> BagSet:
    """The bags a search may see: the training and validation parts of the split (the stored one, or
    the stratified one drawn with ``seed``, as the final run draws it)."""
    bags = assign_split(bags, seed)
    return bags.subset(np.flatnonzero(bags.split != "test"))


@dataclass
class Search:
    """A finished search: the best parameters, their score, and the study (``trials_dataframe()`` etc.)."""

    best_params: dict
    best_value: float
    n_trials: int
    study: object

    def summary(self) -> dict:
        return {"best_params": self.best_params, "best_value": self.best_value, "n_trials": self.n_trials}


def run_search(bags: BagSet, model_name: str, cfg: TrainConfig, search: SearchConfig, *,
               evaluation: EvalConfig = EvalConfig(), study_name: str, storage: str | None = None,
               val_fraction: float = 0.2, overrides: dict | None = None, fail_running: bool = False,
               on_trial=None) -> Search:
    """Search ``model_name``'s space on ``bags`` (the search's bags only: see ``search_bags``) until the
    study holds ``search.trials`` finished (completed or pruned) trials, or ``search.timeout`` passes.
    An existing study of that name in ``storage`` is continued; ``fail_running``: its trials still
    marked running were left by a killed process (a resumed run's own storage) and are marked failed.
    ``on_trial(trial_number, value)`` after each completed trial. Trials train and normalise as the
    final run will (``cfg``, ``evaluation``), less calibration and bootstrap (and as single models where
    the final one is an ensemble): the score is a ranking."""
    optuna = _import_optuna()
    from optuna.trial import TrialState

    overrides = overrides or {}
    # with the data's outputs: class_attention is searched only beyond binary
    space = search_space(model_name, {**bags.label_space.model_settings, **overrides}, search.space)
    quick = replace(evaluation, calibrate="none", n_bootstrap=0, score_train=False)

    def objective(trial) -> float:
        trial_cfg, trial_overrides = split_settings({n: _suggest(trial, n, s) for n, s in space.items()},
                                                    replace(cfg, progress=False, ensemble=1), overrides)
        if not search.inner_folds:
            def report(state):  # step = epochs finished before this one, as the inner folds' steps are 0-based
                trial.report(state["history"][-1]["val_roc_auc"], state["epoch"] - 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            fit = train_run(bags, model_name, trial_cfg, evaluation=quick, splits=("train", "val"), on_epoch=report,
                            **trial_overrides).fit
            return fit.history[fit.best_epoch - 1]["val_roc_auc"]
        scores = []
        for _, fold, _, split in cv_splits(bags.labels, search.inner_folds, [cfg.seed], val_fraction):
            result = run_experiment(replace(bags, split=split), model_name, trial_cfg, evaluation=quick,
                                    **trial_overrides)
            scores.append(result.test["roc_auc"])  # the inner held-out fold: training bags of the outer split
            trial.report(float(np.mean(scores)), fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=make_pruner())
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if fail_running else ():
        study.tell(stale.number, state=TrialState.FAIL)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = search.trials - len(study.get_trials(deepcopy=False, states=counted))
    callbacks = [optuna.study.MaxTrialsCallback(search.trials, states=counted)]
    if on_trial is not None:
        callbacks.append(lambda s, t: t.state == TrialState.COMPLETE and on_trial(t.number, t.value))
    if remaining > 0:
        with warnings.catch_warnings():  # scikit-learn's ill-posed metric warnings on tiny inner folds only
            warnings.filterwarnings("ignore", category=UserWarning, module=r"sklearn\.")
            study.optimize(objective, n_trials=remaining, timeout=search.timeout, catch=(ArcmilError,),
                           callbacks=callbacks)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not completed:
        raise ArcmilError(f"study {study_name!r}: no trial completed (all pruned or failed); "
                          "widen the search space or give more trials")
    return Search(study.best_params, float(study.best_value), len(study.trials), study)


def tuned_experiment(bags: BagSet, model_name: str, cfg: TrainConfig, evaluation: EvalConfig,
                     search: SearchConfig, *, study_name: str, storage: str | None = None, val_fraction: float = 0.2,
                     world: World = SINGLE, fail_running: bool = False, on_trial=None,
                     **overrides) -> tuple[RunResult, Search]:
    """Search on the training and validation parts of ``bags``' split (seeded by ``cfg.seed``), then
    train the best configuration on that split and score its test part once. ``storage``: the study's
    Optuna storage URL (None: in memory); see ``run_search`` for the rest."""
    found = run_search(search_bags(bags, cfg.seed), model_name, cfg, search, evaluation=evaluation,
                       study_name=study_name, storage=storage, val_fraction=val_fraction, overrides=overrides,
                       fail_running=fail_running, on_trial=on_trial)
    best_cfg, best_overrides = split_settings(found.best_params, cfg, overrides)
    return run_experiment(bags, model_name, best_cfg, world, evaluation=evaluation, **best_overrides), found


def best_config_yaml(config, params: dict) -> str:
    """What ``arcmil train --config`` reads to train the best configuration: the run's own settings
    with the search's choices."""
    train_keys = {*COMMAND_KEYS["train"], *TRAIN_FIELDS, *MODEL_FIELDS, *EVAL_FIELDS}
    settings = {k: v for k, v in config.to_dict().items() if k in train_keys}
    return resolve("train", {**settings, **params}).to_yaml()


def write_study(directory: Path, found: Search) -> None:
    """trials.csv, and history.png / importance.png (Optuna's matplotlib plots; importance needs two
    completed trials that differ)."""
    optuna = _import_optuna()
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    found.study.trials_dataframe().to_csv(directory / "trials.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plots = {"history.png": optuna_plots.plot_optimization_history}
        completed = [t for t in found.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len({tuple(sorted(t.params.items())) for t in completed}) >= 2:
            plots["importance.png"] = optuna_plots.plot_param_importances
        for name, plot in plots.items():
            axes = plot(found.study)
            figure = axes.figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(directory / name, dpi=120)
            plt.close(figure)


def tune_to_dir(run, bags: BagSet) -> str:
    """``arcmil tune``: the study (resumed with the run), trials.csv, history and importance plots,
    best_config.yaml and the best configuration's run directory ``best/``. Returns the summary to print."""
    from arcmil.report import SINGLE_COLUMNS, markdown_table, reported, results_row, write_run

    config, search = run.config, run.config.search

    def on_trial(number: int, value: float) -> None:
        run.progress(trials_done=number + 1)
        run.log_epoch(number, {"search_roc_auc": value})

    result, found = tuned_experiment(
        bags, config.model, config.train, config.evaluation, search, study_name=config.model,
        storage=run.study_storage, val_fraction=config.val_fraction, fail_running=run.owns_running_trials,
        on_trial=on_trial, **config.overrides(config.model))

    def write(tmp: Path) -> None:
        write_study(tmp, found)
        (tmp / "best_config.yaml").write_text(best_config_yaml(config, found.best_params))
        write_run(tmp / "best", result)

    run.publish(write, {"search_best_roc_auc": found.best_value, "test": result.test})
    inner = f"{search.inner_folds}-fold inner CV" if search.inner_folds else "the validation split"
    return (f"{found.n_trials} trials on training data ({inner}); best search ROC-AUC {found.best_value:.4f} with "
            f"{found.best_params}\nbest configuration trained and tested once:\n"
            f"{markdown_table([results_row(result)], reported(SINGLE_COLUMNS, results_row(result)))}\n"
            f"search written to {run.out} (best_config.yaml, trials.csv, best/)")
