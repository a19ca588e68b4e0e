"""Repeated stratified k-fold cross-validation through the one pipeline.

Each fold's test part never touches training: the model is fitted on the training part, stopped
early and thresholded on a stratified validation part carved out of the training folds, and
normalised with training-part statistics only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from arcmil.checks import check_cv_inputs
from arcmil.data import BagSet
from arcmil.data.prepare import cv_splits
from arcmil.distributed import SINGLE, World
from arcmil.labels import LabelSpace
from arcmil.outputs import write_text
from arcmil.pipeline import EvalConfig, run_experiment
from arcmil.report import clean_json, markdown_table, reported
from arcmil.settings import SearchConfig
from arcmil.stats import mean_std
from arcmil.train import TrainConfig

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "pr_auc", "f1", "precision", "recall")


def _summary_metrics(records: list[dict]) -> list[str]:
    """SUMMARY_METRICS that the folds report."""
    return reported(SUMMARY_METRICS, records[0]["test"])


@dataclass
class CVResult:
    model_name: str
    tag: str
    folds: list[dict]  # one record per (repeat, fold)
    summary: dict
    test_train_ratio: float
    train_config: TrainConfig
    eval_config: EvalConfig

    def table(self) -> str:
        """metric | mean ± std at the validation threshold | at 0.5 (multi-class: argmax decisions, one column)."""
        def pm(stat):
            return f"{stat['mean']:.4f} ± {stat['std']:.4f}"

        s = self.summary
        columns = summary_columns(s)
        rows = [{"metric": m, **{title: pm(s[key][m]) for title, key in columns.items()}}
                for m in _summary_metrics(self.folds) if s["at_val_threshold"][m]["mean"] is not None]
        return markdown_table(rows, ("metric", *columns))

    def search_table(self) -> str:
        """Nested CV: per fold, the search's best score and the configuration it chose."""
        rows = self.fold_rows()
        tuned = [key for key in rows[0] if key.startswith("tuned_")]
        return markdown_table(rows, ("repeat", "fold", "test_roc_auc", "search_roc_auc", *tuned))

    def fold_rows(self) -> list[dict]:
        """One flat row per fold: where it sits, its threshold, and test metrics at both thresholds."""
        keep = ("repeat", "fold", "seed", "n_train", "n_val", "n_test")
        metrics = _summary_metrics(self.folds)
        space = LabelSpace.from_dict(self.folds[0].get("label_space"))
        return [{k: r[k] for k in keep} | space.threshold_columns(r["threshold"]) | {"best_epoch": r["best_epoch"]}
                | {f"test_{m}": r["test"][m] for m in metrics}
                | {f"test_{m}_at_0.5": r["test_at_0.5"][m] for m in metrics if "test_at_0.5" in r}
                | _search_columns(r) for r in self.folds]


def summary_columns(summary: dict) -> dict[str, str]:
    """A cv table's column titles -> their ``summarize`` keys: at the validation threshold and at 0.5, or
    one column where decisions are an argmax (multi-class: no threshold)."""
    if "at_0.5" in summary:
        return {"at validation threshold": "at_val_threshold", "at 0.5": "at_0.5"}
    return {"mean ± std": "at_val_threshold"}


def _search_columns(record: dict) -> dict:
    """Nested CV: the fold's search score and its chosen configuration (tuned_<setting> columns)."""
    if "search" not in record:
        return {}
    search = record["search"]
    return {"search_roc_auc": search["best_value"], **{f"tuned_{k}": v for k, v in search["best_params"].items()}}


def run_cv(bags: BagSet, model_name: str, cfg: TrainConfig = TrainConfig(), *,
           evaluation: EvalConfig = EvalConfig(), folds: int = 10,
           seeds: list[int] = (0,), val_fraction: float = 0.2, world: World = SINGLE, done: dict | None = None,
           on_fold=None, search: SearchConfig | None = None, storage: str | None = None, resuming: bool = False,
           **model_overrides) -> CVResult:
    """Cross-validate ``model_name``: ``len(seeds)`` repeats of stratified ``folds``-fold CV.
    ``done``: (repeat, fold) -> record of folds an interrupted run finished (not rerun);
    ``on_fold(record)`` is called as each fold finishes. ``search``: nested CV, each outer fold's
    hyper-parameters searched on its training part only (study ``<model>_r<repeat>_f<fold>`` in
    ``storage``; ``resuming``: continue an interrupted fold's study), then trained and tested once."""
    check_cv_inputs(bags, folds)
    # per-fold intervals mean little (the spread over folds does), and folds write no predictions.csv
    evaluation = replace(evaluation, n_bootstrap=0, score_train=False)
    records, done = [], done or {}
    space = bags.label_space
    for repeat, fold, seed, split in cv_splits(bags.labels, folds, list(seeds), val_fraction):
        if (repeat, fold) in done:
            records.append(done[(repeat, fold)])
            continue
        fold_bags, fold_cfg = replace(bags, split=split), replace(cfg, seed=seed)
        found = None
        if search is None:
            result = run_experiment(fold_bags, model_name, fold_cfg, world, evaluation=evaluation, **model_overrides)
        else:
            from arcmil.tune import tuned_experiment

            result, found = tuned_experiment(fold_bags, model_name, fold_cfg, evaluation, search,
                                             study_name=f"{model_name}_r{repeat}_f{fold}", storage=storage,
                                             val_fraction=val_fraction, world=world, fail_running=resuming,
                                             **model_overrides)
        test = result.evaluations["test"]
        tag = result.tag
        records.append({
            "repeat": repeat, "fold": fold, "seed": seed, "tag": tag,
            "n_train": int((split == "train").sum()), "n_val": int((split == "val").sum()),
            "n_test": int((split == "test").sum()),
            "threshold": result.threshold, "best_epoch": result.best_epoch, "label_space": space.to_dict(),
            "test": result.test,
            **({"test_at_0.5": space.metrics(test.labels, test.probs,
                                             space.tune_threshold(test.labels, test.probs, "fixed", 0.5))}
               if space.thresholded else {}),  # multi-class decides by argmax: no threshold to fix
            "validation": result.validation, "history": result.history,
            **({"search": found.summary()} if found else {}),
        })
        if on_fold is not None:
            on_fold(records[-1])
    ratio = float(np.mean([r["n_test"] / r["n_train"] for r in records]))
    return CVResult(model_name, records[0]["tag"], records, summarize(records), ratio, cfg, evaluation)


def write_fold(directory: Path, record: dict) -> None:
    """folds/r{repeat}_f{fold}.json, written whole (temporary name, then rename)."""
    (directory / "folds").mkdir(parents=True, exist_ok=True)
    write_text(directory / "folds" / f"r{record['repeat']}_f{record['fold']}.json",
               json.dumps(clean_json(record), indent=2))


def read_folds(directory: Path) -> dict:
    """(repeat, fold) -> record of the folds already written under ``directory``."""
    records = [json.loads(p.read_text()) for p in sorted((directory / "folds").glob("r*_f*.json"))]
    return {(r["repeat"], r["fold"]): r for r in records}


def write_cv(directory: Path, result: CVResult) -> None:
    """folds/r{repeat}_f{fold}.json, cv_folds.csv and cv_summary.json into ``directory``."""
    for record in result.folds:
        write_fold(directory, record)
    write_cv_tables(directory, result)


def write_cv_tables(directory: Path, result: CVResult) -> None:
    """cv_folds.csv and cv_summary.json (the folds' own JSON is written as each finishes)."""
    pd.DataFrame(result.fold_rows()).to_csv(directory / "cv_folds.csv", index=False)
    seeds = sorted({r["seed"] for r in result.folds})
    summary = {"model": result.model_name, "tag": result.tag, "folds": 1 + max(r["fold"] for r in result.folds),
               "seeds": seeds, "train_config": asdict(result.train_config),
               "eval_config": asdict(result.eval_config), "summary": result.summary}
    (directory / "cv_summary.json").write_text(json.dumps(clean_json(summary), indent=2))


def summarize(records: list[dict]) -> dict:
    """mean ± std over folds of each metric at the validation threshold and at 0.5, and the std of
    the per-repeat means (the spread the ABMIL paper's protocol reports)."""
    out = {}
    for key, name in (("test", "at_val_threshold"), ("test_at_0.5", "at_0.5")):
        if any(key not in r for r in records):  # multi-class folds (a resumed run may mix in older records)
            continue
        out[name] = {}
        for metric in _summary_metrics(records):
            stat = mean_std(r[key][metric] for r in records)
            repeats = sorted({r["repeat"] for r in records})
            repeat_means = [mean_std(r[key][metric] for r in records if r["repeat"] == k)["mean"] for k in repeats]
            stat["std_of_repeat_means"] = mean_std(repeat_means)["std"]
            out[name][metric] = stat
    return out
