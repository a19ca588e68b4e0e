"""Several models through the identical pipeline, on the same seeds or the same folds, with paired tests."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from arcmil.config import ensemble_name
from arcmil.cv import CVResult, run_cv, write_cv
from arcmil.data import BagSet
from arcmil.distributed import SINGLE, World
from arcmil.models.registry import fitted_by_estimator
from arcmil.pipeline import EvalConfig, RunResult, run_experiment
from arcmil.plots import plot_roc
from arcmil.report import SINGLE_COLUMNS, clean_json, markdown_table, reported, results_row, write_run
from arcmil.settings import SearchConfig
from arcmil.stats import mean_std, paired_test
from arcmil.train import TrainConfig

METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy")  # macro figures beyond binary
PAIRED_METRICS = ("roc_auc", "f1", "accuracy")





@dataclass
class ModelRuns:
    """One model's runs: ``records`` holds the test metrics of each seed or fold, in a shared order;
    ``row`` the first run's summary row, ``roc`` its test (labels, probs) (beyond binary every (bag, class)
    pair: LabelSpace.pooled_one_vs_rest; None in fold mode).
    ``runs`` / ``cv`` hold the full results until they are written; a model read back from a
    resumed comparison has only its summary. ``searches``: with ``--tune``, each seed's search summary
    (fold mode: in each fold's record)."""

    name: str
    tag: str
    records: list[dict]
    row: dict | None = None
    roc: tuple[list, list] | None = None
    test_train_ratio: float | None = None
    runs: list[RunResult] = field(default_factory=list)  # seed mode: full results, written as run dirs
    cv: CVResult | None = None  # fold mode
    searches: list[dict] = field(default_factory=list)
    label_kind: str = "binary"  # the data's LabelSpace.kind: says what ``roc`` pools

    def summary(self) -> dict:
        return {"name": self.name, "tag": self.tag, "records": self.records, "row": self.row, "roc": self.roc,
                "test_train_ratio": self.test_train_ratio, "searches": self.searches, "label_kind": self.label_kind}


@dataclass
class Comparison:
    models: list[ModelRuns]
    mode: str  # "single", "seeds" or "folds"
    test_train_ratio: float | None  # for the corrected paired test; None = plain paired t
    description: str

    @property
    def metrics(self) -> list[str]:
        """METRICS that the runs report (recorded per run: a resumed comparison reads them back)."""
        return reported(METRICS, self.models[0].records[0])

    def summary_rows(self) -> list[dict]:
        rows = []
        for m in self.models:
            row = {"model": m.name, "tag": m.tag, "runs": len(m.records)}
            for metric in self.metrics:
                stat = mean_std(r[metric] for r in m.records)
                row[f"test_{metric}_mean"], row[f"test_{metric}_std"] = stat["mean"], stat["std"]
            rows.append(row)
        return rows

    def paired_rows(self) -> list[dict]:
        rows = []
        for a, b in itertools.combinations(self.models, 2):
            for metric in [m for m in PAIRED_METRICS if m in self.metrics]:
                test = paired_test([r[metric] for r in a.records], [r[metric] for r in b.records],
                                   test_train_ratio=self.test_train_ratio)
                rows.append({"model_a": a.name, "model_b": b.name, "metric": f"test_{metric}", **test})
        return rows

    def table(self) -> str:
        if self.mode == "single":
            return markdown_table([m.row for m in self.models], reported(SINGLE_COLUMNS, self.models[0].row))
        cells = [{"model": r["model"], "tag": r["tag"], "runs": r["runs"],
                  **{f"test_{m}": _pm(r[f"test_{m}_mean"], r[f"test_{m}_std"]) for m in self.metrics}}
                 for r in self.summary_rows()]
        return markdown_table(cells, ("model", "tag", "runs", *(f"test_{m}" for m in self.metrics)))

    def report(self) -> str:
        """What ``arcmil compare`` prints: the description, the table and (several runs) the paired tests."""
        paired = "" if self.mode == "single" else "\n\n" + self.paired_table()
        return f"{self.description}\n{self.table()}{paired}"

    def paired_table(self) -> str:
        rows = [{"pair": f"{r['model_a']} − {r['model_b']}", "metric": r["metric"], "mean diff": r["mean_diff"],
                 "p": r["p_value"], "significant (p<0.05)": "yes" if r["significant"] else "no"}
                for r in self.paired_rows()]
        return markdown_table(rows, ("pair", "metric", "mean diff", "p", "significant (p<0.05)"))


def _pm(mean, std) -> str:
    return "" if mean is None else f"{mean:.4f} ± {std:.4f}"


def _seed_runs(bags, name, cfg, evaluation, overrides, seeds, world, search, storage, resuming) -> ModelRuns:
    runs, searches = [], []
    for s in seeds:
        if search is None:
            runs.append(run_experiment(bags, name, replace(cfg, seed=s), world, evaluation=evaluation, **overrides))
            continue
        from arcmil.tune import tuned_experiment

        result, found = tuned_experiment(bags, name, replace(cfg, seed=s), evaluation, search,
                                         study_name=f"{name}_seed{s}", storage=storage, world=world,
                                         fail_running=resuming, **overrides)
        runs.append(result)
        searches.append({"seed": s, **found.summary()})
    records = [{"seed": s, **{m: r.test[m] for m in reported(METRICS, r.test)}} for s, r in zip(seeds, runs)]
    test = runs[0].evaluations["test"]
    roc = tuple(part.tolist() for part in runs[0].label_space.pooled_one_vs_rest(test.labels, test.probs))
    splits = runs[0].data["splits"]
    ratio = splits["test"]["n_bags"] / splits["train"]["n_bags"] if bags.split is None else None
    return ModelRuns(name, runs[0].tag, records, results_row(runs[0]), roc, ratio, runs=runs, searches=searches,
                     label_kind=runs[0].label_space.kind)


def _fold_runs(bags, name, cfg, evaluation, overrides, seeds, folds, val_fraction, world, search, storage,
               resuming) -> ModelRuns:
    cv = run_cv(bags, name, cfg, evaluation=evaluation, folds=folds, seeds=seeds, val_fraction=val_fraction,
                world=world, search=search, storage=storage, resuming=resuming, **overrides)
    records = [{"repeat": f["repeat"], "fold": f["fold"], **{m: f["test"][m] for m in reported(METRICS, f["test"])}}
               for f in cv.folds]
    return ModelRuns(name, cv.tag, records, test_train_ratio=cv.test_train_ratio, cv=cv)


def compared(names: list[str], cfg: TrainConfig) -> list[tuple[str, str, TrainConfig]]:
    """(entry, model name, training settings) of each model a comparison runs: with ``cfg.ensemble`` K > 1,
    every model trained by gradient both alone and as an ensemble of K (entry ``<name>_ens<K>``, whose
    member 0 is the single model), so that the paired tests say whether ensembling pays on the data."""
    out = []
    for name in names:
        out.append((name, name, replace(cfg, ensemble=1)))
        if cfg.ensemble > 1 and not fitted_by_estimator(name):
            out.append((ensemble_name(name, cfg.ensemble), name, cfg))
    return out


def compare_models(bags: BagSet, names: list[str], cfg: TrainConfig, overrides: dict[str, dict], *,
                   evaluation: EvalConfig = EvalConfig(), seeds: list[int] | None = None, folds: int | None = None,
                   val_fraction: float = 0.2, world: World = SINGLE, done: dict[str, ModelRuns] | None = None,
                   on_model=None, search: SearchConfig | None = None, storage: str | None = None,
                   resuming: bool = False) -> Comparison:
    """Run every model on the same seeds (each its own split when the data has none) or the same
    repeated stratified folds. ``overrides``: model name -> its hyper-parameters. ``done``: models
    finished by an interrupted comparison (not rerun); ``on_model(ModelRuns)`` is called as each
    model finishes. ``search``: each model is first tuned on the training part of every seed's split
    (or every fold: nested CV), its studies in ``storage`` (see arcmil.tune). ``cfg.ensemble`` > 1: each
    model alone and as an ensemble (``compared``)."""
    seeds, done = list(seeds or [cfg.seed]), done or {}
    models = []
    for entry, name, entry_cfg in compared(names, cfg):
        if entry in done:
            models.append(done[entry])
            continue
        tuning = (search, storage, resuming)
        m = (_fold_runs(bags, name, entry_cfg, evaluation, overrides[name], seeds, folds, val_fraction, world,
                        *tuning)
             if folds else _seed_runs(bags, name, entry_cfg, evaluation, overrides[name], seeds, world, *tuning))
        m.name = entry  # <model>_ens<K> for an ensemble: its directory and its row
        if m.row is not None:  # one seed: the table is its run's row
            m.row = {**m.row, "model": entry}
        if on_model is not None:
            on_model(m)
        models.append(m)
    ratio = models[0].test_train_ratio
    tuned = "" if search is None else (f"; each model tuned with {search.trials} trials on the training part of "
                                       f"every {'fold' if folds else 'split'}")
    if folds:
        return Comparison(models, "folds", ratio, f"{len(seeds)} × {folds}-fold stratified CV (seeds "
                          f"{', '.join(map(str, seeds))}); threshold on a {val_fraction:.0%} validation part of "
                          f"each training fold{tuned}")
    mode = "single" if len(seeds) == 1 else "seeds"
    split_text = "a stratified 70/15/15 split drawn per seed" if bags.split is None else "the data's own split"
    return Comparison(models, mode, ratio, f"seeds {', '.join(map(str, seeds))}, {split_text}; threshold tuned "
                      f"on validation ({evaluation.threshold_method}){tuned}")


MODEL_SUMMARY = "model_summary.json"


def write_model(directory: Path, m: ModelRuns) -> None:
    """A model's outputs: its run directory (one seed), run directories per seed, or its CV; plus the
    summary a resumed comparison reads back instead of rerunning the model."""
    single = len(m.runs) == 1
    for run in m.runs:
        write_run(directory if single else directory / f"seed_{run.train_config.seed}", run)
    if m.cv is not None:
        directory.mkdir(parents=True, exist_ok=True)
        write_cv(directory, m.cv)
    (directory / MODEL_SUMMARY).write_text(json.dumps(clean_json(m.summary()), indent=2))


def read_model(directory: Path) -> ModelRuns:
    data = json.loads((directory / MODEL_SUMMARY).read_text())
    return ModelRuns(data["name"], data["tag"], data["records"], data["row"],
                     tuple(data["roc"]) if data["roc"] else None, data["test_train_ratio"],
                     searches=data.get("searches", []), label_kind=data.get("label_kind", "binary"))


def write_comparison(directory: Path, comparison: Comparison, source: str) -> None:
    """comparison.csv/.md, comparison_runs.csv, paired_tests.csv and roc.png (the models' own outputs
    are written by ``write_model`` as each finishes)."""
    summary = pd.DataFrame([m.row for m in comparison.models] if comparison.mode == "single"
                           else comparison.summary_rows())
    summary.to_csv(directory / "comparison.csv", index=False)
    text = f"# arcmil compare\n\ndata: `{source}`; {comparison.description}\n\n{comparison.table()}\n"
    if comparison.mode != "single":
        pd.DataFrame([{"model": m.name, **r} for m in comparison.models for r in m.records]).to_csv(
            directory / "comparison_runs.csv", index=False)
        pd.DataFrame(comparison.paired_rows()).to_csv(directory / "paired_tests.csv", index=False)
        text += f"\n## Paired tests ({_paired_name(comparison)})\n\n{comparison.paired_table()}\n"
    (directory / "comparison.md").write_text(text)
    if comparison.mode != "folds" and all(m.roc for m in comparison.models):  # one curve per model: first seed
        pooled = "" if comparison.models[0].label_kind == "binary" else ", micro-average over classes"
        plot_roc({m.tag: m.roc for m in comparison.models}, directory / "roc.png",
                 title="Test ROC" + ("" if comparison.mode == "single" else " (first seed)") + pooled)


def _paired_name(comparison: Comparison) -> str:
    if comparison.test_train_ratio is None:
        return "paired t-test over seeds"
    return (f"corrected resampled t-test, Nadeau & Bengio 2003, n_test/n_train = "
            f"{comparison.test_train_ratio:.3f}")


