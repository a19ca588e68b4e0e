"""Several models through the identical pipeline, on the same seeds or the same folds, with paired tests."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from arcmil.cv import CVResult, run_cv, write_cv
from arcmil.data import BagSet
from arcmil.distributed import SINGLE, World
from arcmil.pipeline import RunResult, run_experiment
from arcmil.plots import plot_roc
from arcmil.report import markdown_table, results_row, write_run
from arcmil.stats import mean_std, paired_test
from arcmil.train import TrainConfig

METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy")
PAIRED_METRICS = ("roc_auc", "f1", "accuracy")
SINGLE_COLUMNS = ("model", "tag", "test_roc_auc", "test_pr_auc", "test_f1", "test_precision", "test_recall",
                  "threshold", "best_epoch")


@dataclass
class ModelRuns:
    """One model's runs: ``records`` holds the test metrics of each seed or fold, in a shared order."""

    name: str
    tag: str
    records: list[dict]
    runs: list[RunResult] = field(default_factory=list)  # seed mode: full results, written as run dirs
    cv: CVResult | None = None  # fold mode


@dataclass
class Comparison:
    models: list[ModelRuns]
    mode: str  # "single", "seeds" or "folds"
    test_train_ratio: float | None  # for the corrected paired test; None = plain paired t
    description: str

    def summary_rows(self) -> list[dict]:
        rows = []
        for m in self.models:
            row = {"model": m.name, "tag": m.tag, "runs": len(m.records)}
            for metric in METRICS:
                stat = mean_std(r[metric] for r in m.records)
                row[f"test_{metric}_mean"], row[f"test_{metric}_std"] = stat["mean"], stat["std"]
            rows.append(row)
        return rows

    def paired_rows(self) -> list[dict]:
        rows = []
        for a, b in itertools.combinations(self.models, 2):
            for metric in PAIRED_METRICS:
                test = paired_test([r[metric] for r in a.records], [r[metric] for r in b.records],
                                   test_train_ratio=self.test_train_ratio)
                rows.append({"model_a": a.name, "model_b": b.name, "metric": f"test_{metric}", **test})
        return rows

    def table(self) -> str:
        if self.mode == "single":
            return markdown_table([results_row(m.runs[0].results) for m in self.models], SINGLE_COLUMNS)
        cells = [{"model": r["model"], "tag": r["tag"], "runs": r["runs"],
                  **{f"test_{m}": _pm(r[f"test_{m}_mean"], r[f"test_{m}_std"]) for m in METRICS}}
                 for r in self.summary_rows()]
        return markdown_table(cells, ("model", "tag", "runs", *(f"test_{m}" for m in METRICS)))

    def paired_table(self) -> str:
        rows = [{"pair": f"{r['model_a']} − {r['model_b']}", "metric": r["metric"], "mean diff": r["mean_diff"],
                 "p": r["p_value"], "significant (p<0.05)": "yes" if r["significant"] else "no"}
                for r in self.paired_rows()]
        return markdown_table(rows, ("pair", "metric", "mean diff", "p", "significant (p<0.05)"))


def _pm(mean, std) -> str:
    return "" if mean is None else f"{mean:.4f} ± {std:.4f}"


def compare_models(bags: BagSet, names: list[str], cfg: TrainConfig, overrides: dict[str, dict], *,
                   seeds: list[int] | None = None, folds: int | None = None, val_fraction: float = 0.2,
                   world: World = SINGLE) -> Comparison:
    """Run every model on the same seeds (each its own split when the data has none) or the same
    repeated stratified folds. ``overrides``: model name -> its hyper-parameters."""
    seeds = list(seeds or [cfg.seed])
    models = []
    if folds:
        for name in names:
            cv = run_cv(bags, name, cfg, folds=folds, seeds=seeds, val_fraction=val_fraction, world=world,
                        **overrides[name])
            records = [{"repeat": f["repeat"], "fold": f["fold"], **{m: f["test"][m] for m in METRICS}}
                       for f in cv.folds]
            models.append(ModelRuns(name, cv.tag, records, cv=cv))
        ratio = models[0].cv.test_train_ratio
        return Comparison(models, "folds", ratio, f"{len(seeds)} × {folds}-fold stratified CV (seeds "
                          f"{', '.join(map(str, seeds))}); threshold on a {val_fraction:.0%} validation part of "
                          f"each training fold")
    for name in names:
        runs = [run_experiment(bags, name, replace(cfg, seed=s), world, **overrides[name]) for s in seeds]
        records = [{"seed": s, **{m: r.results["test"][m] for m in METRICS}} for s, r in zip(seeds, runs)]
        models.append(ModelRuns(name, runs[0].tag, records, runs=runs))
    resplit = bags.split is None  # each seed draws its own 70/15/15 split: overlapping training sets
    test_share = models[0].runs[0].results["data"]["splits"]
    ratio = test_share["test"]["n_bags"] / test_share["train"]["n_bags"] if resplit else None
    mode = "single" if len(seeds) == 1 else "seeds"
    split_text = "a stratified 70/15/15 split drawn per seed" if resplit else "the data's own split"
    return Comparison(models, mode, ratio, f"seeds {', '.join(map(str, seeds))}, {split_text}; threshold tuned "
                      f"on validation ({cfg.threshold_method})")


def write_comparison(directory: Path, comparison: Comparison, source: str, cfg: TrainConfig) -> None:
    """Run directories (or per-fold JSON) per model, comparison.csv/.md, paired_tests.csv, roc.png."""
    for m in comparison.models:
        for run in m.runs:
            write_run(directory / m.name if comparison.mode == "single" else
                      directory / m.name / f"seed_{run.results['train_config']['seed']}", run)
        if m.cv is not None:
            (directory / m.name).mkdir(parents=True)
            write_cv(directory / m.name, m.cv, cfg)
    summary = pd.DataFrame([results_row(m.runs[0].results) for m in comparison.models]
                           if comparison.mode == "single" else comparison.summary_rows())
    summary.to_csv(directory / "comparison.csv", index=False)
    text = f"# arcmil compare\n\ndata: `{source}`; {comparison.description}\n\n{comparison.table()}\n"
    if comparison.mode != "single":
        pd.DataFrame([{"model": m.name, **r} for m in comparison.models for r in m.records]).to_csv(
            directory / "comparison_runs.csv", index=False)
        pd.DataFrame(comparison.paired_rows()).to_csv(directory / "paired_tests.csv", index=False)
        text += f"\n## Paired tests ({_paired_name(comparison)})\n\n{comparison.paired_table()}\n"
    (directory / "comparison.md").write_text(text)
    if comparison.mode != "folds":  # one ROC curve per model: its first seed's test split
        plot_roc({m.tag: (m.runs[0].evaluations["test"].labels, m.runs[0].evaluations["test"].probs)
                  for m in comparison.models}, directory / "roc.png",
                 title="Test ROC" + ("" if comparison.mode == "single" else " (first seed)"))


def _paired_name(comparison: Comparison) -> str:
    if comparison.test_train_ratio is None:
        return "paired t-test over seeds"
    return (f"corrected resampled t-test, Nadeau & Bengio 2003, n_test/n_train = "
            f"{comparison.test_train_ratio:.3f}")


