"""report.html: one self-contained page (images inline, no network) that explains a run directory.

Built from what ``train``, ``compare`` and ``cv`` wrote (so ``arcmil report DIR`` rebuilds it for any
finished run): the results table (mean ± std and paired tests when there are several seeds or
folds), every model's test ROC, precision-recall and reliability curves on one figure each, the
training curves, a gallery of test documents (true and false positives and negatives) with their
windows coloured by each explanation method, the data summary and the exact config. Rendered by
a Jinja2 template (``templates/report.html.j2``); figures by matplotlib.
"""
from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from arcmil import __version__
from arcmil.config import ensemble_curve_name, ensemble_name
from arcmil.errors import ArcmilError

REPORT_FILE = "report.html"
GALLERY = (("true positive", 1, 1, False), ("false positive", 0, 1, False), ("false negative", 1, 0, True),
           ("true negative", 0, 0, True))  # (kind, label, prediction, lowest probability first)
GALLERY_MAX_CLASSES = 8  # beyond binary, the gallery shows the classes with the most test documents, at most this many
GALLERY_MAX_WINDOWS = 512  # longer documents are left out of the gallery: one row of colours cannot show them


def write_report(directory: str | Path, bags=None) -> Path:
    """Write ``directory``/report.html from the run's files (replacing an earlier report). ``bags``: the
    run's data when the caller holds it (else the gallery reads it again from the recorded path)."""
    from jinja2 import Environment, PackageLoader

    from arcmil.outputs import write_text

    directory = Path(directory)
    if not (directory / "config.yaml").is_file():
        raise ArcmilError(f"{directory}: not an arcmil run directory (no config.yaml)")
    config_text = (directory / "config.yaml").read_text()
    runs = _first_run_per_model(directory)
    command = ("compare" if (directory / "comparison.csv").exists() else
               "cv" if (directory / "cv_summary.json").exists() else "train")
    if command == "train" and not runs:
        raise ArcmilError(f"{directory}: the run has no results yet (is it finished?)")
    gallery, gallery_note = _gallery(yaml.safe_load(config_text) or {}, runs, bags)
    # every value is escaped: bag ids, paths and config values come from the user's data and are shown as text
    # (select_autoescape() would leave a template named *.j2 unescaped)
    env = Environment(loader=PackageLoader("arcmil", "templates"), autoescape=True)
    html = env.get_template("report.html.j2").render(
        command=command, name=directory.name, description=_description(directory, command),
        tables=_tables(directory, command, runs), figures=_figures(runs), gallery=gallery,
        gallery_note=gallery_note, data=_data_summary(directory, runs), config=config_text, version=__version__,
        created=time.strftime("%Y-%m-%d %H:%M:%S"), directory=directory.resolve())
    path = directory / REPORT_FILE
    write_text(path, html)
    return path


def _first_run_per_model(directory: Path) -> dict[str, Path]:
    """model name (``<model>_ens<K>`` for an ensemble, as compare names it) -> the directory of its first
    trained run (its first seed in a comparison)."""
    runs = {}
    for path in sorted(directory.rglob("stage3_*_results.json")):
        results = json.loads(path.read_text())
        ensemble = results.get("ensemble")
        runs.setdefault(ensemble_name(results["model"], ensemble["size"] if ensemble else 1), path.parent)
    return runs


def _results(run: Path) -> dict:
    return json.loads(next(run.glob("stage3_*_results.json")).read_text())


def _description(directory: Path, command: str) -> str:
    if command == "compare" and (directory / "comparison.md").exists():
        first = (directory / "comparison.md").read_text().split("\n\n")[1]
        return first.replace("`", "")
    if command == "cv":
        summary = json.loads((directory / "cv_summary.json").read_text())
        return (f"{summary['tag']}: {len(summary['seeds'])} × {summary['folds']}-fold stratified cross-validation, "
                "mean ± std over folds")
    return "one model trained and tested; threshold tuned on validation"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def _frame_table(title: str, table_id: str, frame: pd.DataFrame) -> dict:
    return {"title": title, "id": table_id, "columns": list(frame.columns),
            "rows": [[_cell(v) for v in row] for row in frame.itertuples(index=False)]}


def _tables(directory: Path, command: str, runs: dict[str, Path]) -> list[dict]:
    if command == "compare":
        tables = [_frame_table("Comparison (test split)", "comparison", pd.read_csv(directory / "comparison.csv"))]
        if (directory / "paired_tests.csv").exists():
            tables.append(_frame_table("Paired tests", "paired", pd.read_csv(directory / "paired_tests.csv")))
        return tables
    if command == "cv":
        summary = json.loads((directory / "cv_summary.json").read_text())["summary"]
        from arcmil.cv import summary_columns

        columns = summary_columns(summary)
        rows = [[metric, *(f"{s[metric]['mean']:.4f} ± {s[metric]['std']:.4f}" if s[metric]["mean"] is not None
                           else "" for s in (summary[key] for key in columns.values()))]
                for metric in summary["at_val_threshold"]]
        tables = [{"title": "Cross-validation, mean ± std over folds", "id": "comparison",
                   "columns": ["metric", *columns], "rows": rows}]
        return tables + [_frame_table("Folds", "folds", pd.read_csv(directory / "cv_folds.csv"))]
    run = next(iter(runs.values()))
    tables = [_frame_table("Result (test split)", "comparison", pd.read_csv(next(run.glob("stage3_*_results.csv"))))]
    test = _results(run)["test"]
    if "confusion_matrix" in test and "classes" in test["confusion_matrix"]:  # multi-class
        matrix = test["confusion_matrix"]
        tables.append({"title": "Confusion matrix (test split; rows: true class, columns: predicted)",
                       "id": "confusion", "columns": ["true class", *matrix["classes"]],
                       "rows": [[c, *map(str, row)] for c, row in zip(matrix["classes"], matrix["counts"])]})
    per_class = test.get("per_class") or test.get("per_label")
    if per_class:
        tables.append(_frame_table("Per class (test split, one-vs-rest)", "per_class",
                                   pd.DataFrame([{"class": c, **v} for c, v in per_class.items()])))
    return tables


def _file_png(path: Path) -> str:
    """A PNG the run wrote, as base64 for a data URI."""
    return base64.b64encode(path.read_bytes()).decode()


def _drawn_png(plot, data, **kwargs) -> str:
    """``plot(data, file, **kwargs)`` (an arcmil.plots function) drawn into memory, as base64."""
    buffer = io.BytesIO()
    plot(data, buffer, **kwargs)
    return base64.b64encode(buffer.getvalue()).decode()


def _figures(runs: dict[str, Path]) -> list[dict]:
    """All models' test curves on one ROC, PR and reliability figure each (one model: the ROC and PR
    figures its run drew); each run's training curves and reliability before and after calibration (an
    ensemble's: of its members' mean calibrated probability)."""
    from arcmil.plots import plot_calibration, plot_pr, plot_roc

    own = ("training_curves.png", "training curves"), ("calibration.png", "reliability before and after calibration")
    figures = []
    if len(runs) == 1:
        own = ("roc.png", "ROC"), ("pr.png", "precision-recall"), *own
    else:
        from arcmil.labels import LabelSpace

        curves = {}
        for run in runs.values():
            results = _results(run)
            space = LabelSpace.from_dict(results.get("label_space"))
            test = pd.read_csv(run / "predictions.csv", dtype={"label": str} if space.kind == "multiclass" else None
                               ).query("split == 'test'")
            if {"label", f"label_{space.classes[0]}"} & set(test):  # labelled: every (bag, class) pair pooled
                truth, scores = space.pooled_one_vs_rest(*space.table_scores(test))
                if 0 < truth.sum() < len(truth):
                    curves[results["tag"] if space.binary else f"{results['tag']} (micro-average)"] = (truth, scores)
        if curves:
            for plot, caption in ((plot_roc, "Test ROC of every model"),
                                  (plot_pr, "Test precision-recall of every model"),
                                  (plot_calibration, "Test reliability of every model (calibrated probabilities)")):
                figures.append({"png": _drawn_png(plot, curves, title=caption), "caption": caption})
    for name, run in runs.items():
        captions, ensemble = dict(own), _results(run).get("ensemble")
        if ensemble:
            members = ensemble["calibrations"][0]["method"]
            captions["calibration.png"] = f"reliability of the {ensemble_curve_name(members)}"
        figures += [{"png": _file_png(run / file), "caption": f"{name}: {caption}"}
                    for file, caption in captions.items() if (run / file).exists()]
    return figures


def _gallery(config: dict, runs: dict[str, Path], bags=None) -> tuple[list[dict], str | None]:
    """Per model, test documents of each kind among those of at most GALLERY_MAX_WINDOWS windows, their
    windows coloured by each explanation method: binary, the most confident true/false positive and the
    least confident false/true negative; beyond binary, per class (at most GALLERY_MAX_CLASSES, those with the
    most test documents), the most confident right and wrong prediction of it (explaining that class's logit)."""
    if not runs:
        return [], "Cross-validation keeps no model, so there are no documents to show."
    from arcmil.calibration import calibrator_from_dict
    from arcmil.checkpoint import load_checkpoint
    from arcmil.data import Normalizer, collate, load_bags
    from arcmil.demo import make_demo_bags
    from arcmil.explain import METHODS, explain_bags
    from arcmil.faithfulness import bag_faithfulness
    from arcmil.labels import LabelSpace
    from arcmil.plots import plot_document_explanations

    try:
        if bags is None:
            bags = load_bags(config["data"], require_labels=False) if config.get("data") else make_demo_bags()
    except ArcmilError as exc:
        return [], f"The run's data could not be read for the gallery ({exc})."
    position = {str(b): i for i, (b, n) in enumerate(zip(bags.bag_ids, bags.lengths)) if n <= GALLERY_MAX_WINDOWS}
    gallery = []
    for name, run in runs.items():
        checkpoint = next(run.glob("best_*.pth"), None)
        if checkpoint is None:
            continue
        model, meta = load_checkpoint(checkpoint)
        space = LabelSpace.from_dict(meta.get("label_space"))
        names = {} if space.binary else {"label": str, "pred": str}  # class names as written ('07' is not 7)
        test = pd.read_csv(run / "predictions.csv", dtype={"bag_id": str, **names}).query("split == 'test'")
        chosen = _gallery_picks(test[test["bag_id"].isin(position.keys())], space)
        normalizer, calibrator = Normalizer.from_dict(meta["normalization"]), calibrator_from_dict(
            meta.get("calibration"), space)
        frames = {}  # class explained -> the rows of every chosen bag explained for it (one explain call each)
        for target in dict.fromkeys(target for _, _, target in chosen):
            ids = list(dict.fromkeys(bag_id for _, bag_id, t in chosen if t == target))
            frames[target] = explain_bags(model, bags.subset([position[b] for b in ids]).in_space(space), METHODS,
                                          normalizer=normalizer, calibrator=calibrator,
                                          classes=None if target is None else [target])
        for kind, bag_id, target in chosen:
            frame = frames[target][frames[target]["bag_id"].astype(str) == bag_id]
            title = f"{name} — {kind}: {bag_id}, p = {frame['prob'].iloc[0]:.3f}"
            marks = frame["instance_label"].to_numpy() if "instance_label" in frame else None
            importances = {m: frame[m].to_numpy() for m in METHODS}
            x = collate(bags, [position[bag_id]], normalizer).x[0]
            faithful, _ = bag_faithfulness(model, x, importances, None if target is None else
                                           space.classes.index(target), seed=position[bag_id])
            aopcr = ", ".join(f"{m.replace('_', ' ')} {faithful[m]['aopcr']:.3f}" for m in METHODS)
            gallery.append({"png": _drawn_png(plot_document_explanations, importances, title=title, marks=marks),
                            "caption": f"{title}; AOPCR {aopcr}"})
    return gallery, None if gallery else "No test document could be shown (no checkpoint or labels)."


def _gallery_picks(test: pd.DataFrame, space) -> list[tuple[str, str, str | None]]:
    """(kind, bag_id, class to explain or None) of the gallery's documents from a run's test predictions."""
    if space.binary:
        if "label" not in test:
            return []
        picks = []
        for kind, label, pred, ascending in GALLERY:
            cell = test[(test["label"] == label) & (test["pred"] == pred)]
            picks += [(kind, bag_id, None) for bag_id in cell.sort_values("prob", ascending=ascending)["bag_id"][:1]]
        return picks
    picks = []
    for name in _gallery_classes(test, space):
        if space.kind == "multiclass":
            if "label" not in test:
                return []
            truth, predicted = test["label"] == name, test["pred"] == name
        else:
            if f"label_{name}" not in test:
                return []
            truth, predicted = test[f"label_{name}"] == 1, test[f"pred_{name}"] == 1
        for kind, cell in ((f"right {name}", test[truth & predicted]), (f"wrong {name}", test[~truth & predicted])):
            most_confident = cell.sort_values(f"prob_{name}", ascending=False)["bag_id"][:1]
            picks += [(kind, bag_id, name) for bag_id in most_confident]
    return picks


def _gallery_classes(test: pd.DataFrame, space) -> list[str]:
    """The GALLERY_MAX_CLASSES classes (labels) most often true among the test documents, in the space's order."""
    if len(space.classes) <= GALLERY_MAX_CLASSES:
        return list(space.classes)
    if space.kind == "multiclass":
        support = test["label"].value_counts() if "label" in test else pd.Series(dtype=int)
    else:
        support = pd.Series({name: test[f"label_{name}"].sum() for name in space.classes if f"label_{name}" in test})
    top = set(support.reindex(space.classes, fill_value=0).sort_values(ascending=False, kind="stable")
              .index[:GALLERY_MAX_CLASSES])
    return [name for name in space.classes if name in top]


def _data_summary(directory: Path, runs: dict[str, Path]) -> dict:
    info = json.loads((directory / "run_info.json").read_text()) if (directory / "run_info.json").exists() else {}
    out = {"source": info.get("data", {}).get("source") or "built-in demo data",
           "sha256": info.get("data", {}).get("sha256") or ""}
    if runs:
        data = _results(next(iter(runs.values())))["data"]
        out.update({k: v for k, v in data.items() if not isinstance(v, dict)})
        out.update({f"{split} bags (positive)": f"{s['n_bags']} ({s['n_positive']})" if "n_positive" in s
                    else f"{s['n_bags']} ({', '.join(f'{k} {v}' for k, v in s['class_counts'].items())})"
                    for split, s in data.get("splits", {}).items()})
    return out
