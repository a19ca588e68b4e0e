"""Multi-class and multi-label documents: do the three note models learn classes that need different
evidence, with the default recipe?

Tasks (``arcmil.tasks``): ``multiclass4``, ``make_multiclass_task(4)``: classes none, order_1 (A
before B), witness_2 (a witness window) and pair_3 (C and D together), with distractors (B before A,
C or D alone) in every class; ``multilabel5``, ``make_multilabel_task(5)``: five labels, each present
with probability 0.35, of kinds order, witness, pair, order, witness. 1,500 documents, data seed and
training seed both varying. Every cell runs what ``arcmil train`` runs (``run_experiment``, default
recipe, ``TrainConfig(seed=seed)``). Per task and model: test macro ROC-AUC, macro F1 and accuracy
(multi-label: exact-set accuracy), median and worst seed, and the median one-vs-rest ROC-AUC of each
class or label. A model name ending in ``+clsatt`` is that model with one attention per class
(``class_attention``, weights (B, K, N)) instead of the shared one. On the multi-class task each cell also
scores how well the attention weights localise each class's evidence: the instance-localisation ROC-AUC
(``arcmil explain``'s pooled figure) of the weights of each test bag's true class over its windows.
Cells are written to the JSON as they finish; a rerun with the same ``--out`` skips them.

    python benchmarks/multiclass.py --seeds 0-9 --workers 2 --out benchmarks/results/multiclass.json
    python benchmarks/multiclass.py --seeds 0-9 --workers 2 --models attention_mil+clsatt,transformer_mil+clsatt \
        --out benchmarks/results/multiclass.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from arcmil.explain import explain_bags, localisation_auc
from arcmil.pipeline import EvalConfig, run_experiment
from arcmil.tasks import MULTI_TASKS, make_task
from arcmil.train import TrainConfig

from recipe import run_cell_grid  # beside this script

MODELS = ("attention_mil", "transformer_mil", "transmil")  # and any of them with PER_CLASS
METRICS = ("roc_auc", "f1", "accuracy")


PER_CLASS = "+clsatt"  # model-name suffix: one attention per class


def run_cell(task: str, model: str, seed: int) -> dict:
    torch.set_num_threads(1)
    tic = time.perf_counter()
    name, per_class_attention = model.removesuffix(PER_CLASS), model.endswith(PER_CLASS)
    result = run_experiment(make_task(task, seed=seed), name, TrainConfig(seed=seed, progress=False),
                            evaluation=EvalConfig(n_bootstrap=0),
                            **({"class_attention": True} if per_class_attention else {}))
    seconds = time.perf_counter() - tic
    test = result.test
    per_class = test.get("per_class") or test["per_label"]
    cell = {"task": task, "model": model, "seed": seed, **{m: test[m] for m in METRICS},
            "per_class_roc_auc": {name: v["roc_auc"] for name, v in per_class.items()},
            "best_epoch": result.best_epoch, "seconds": seconds}
    if result.label_space.kind == "multiclass":  # each window marks its bag's one class's evidence
        frame = explain_bags(result.model, result.parts["test"], ["weights"], normalizer=result.normalizer,
                             calibrator=result.calibrator, classes=list(result.label_space.classes))
        scores = localisation_auc(frame, ["weights"])["per_class"]
        cell["weights_localisation"] = {name: s["weights"]["pooled"] for name, s in scores.items()
                                        if s["weights"]["pooled"] is not None}  # class none: no evidence
    return cell


def summarize(cells: list[dict]) -> list[dict]:
    rows = []
    for task in MULTI_TASKS:
        for model in dict.fromkeys(c["model"] for c in cells):
            cell = [c for c in cells if (c["task"], c["model"]) == (task, model)]
            if not cell:
                continue
            row = {"task": task, "model": model, "seeds": len(cell)}
            for m in METRICS:
                values = [c[m] for c in cell]
                row[f"{m}_median"], row[f"{m}_worst"] = float(np.median(values)), float(np.min(values))
            row["per_class_roc_auc_median"] = {name: float(np.median([c["per_class_roc_auc"][name] for c in cell]))
                                               for name in cell[0]["per_class_roc_auc"]}
            if "weights_localisation" in cell[0]:
                row["weights_localisation_median"] = {
                    name: float(np.median([c["weights_localisation"][name] for c in cell]))
                    for name in cell[0]["weights_localisation"]}
            row["seconds_median"] = float(np.median([c["seconds"] for c in cell]))
            rows.append(row)
    return rows


def print_tables(rows: list[dict]) -> None:
    print("| task | model | macro ROC-AUC median / worst | macro F1 median / worst | accuracy median / worst | "
          "s / run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['model']} | " + " | ".join(f"{r[f'{m}_median']:.3f} / {r[f'{m}_worst']:.3f}"
                                                            for m in METRICS) + f" | {r['seconds_median']:.0f} |")
    for task in MULTI_TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        names = list(task_rows[0]["per_class_roc_auc_median"])
        print(f"\n{task}: median one-vs-rest test ROC-AUC per class\n")
        print("| model | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for r in task_rows:
            print(f"| {r['model']} | " + " | ".join(f"{r['per_class_roc_auc_median'][n]:.3f}" for n in names) + " |")
        localised = [r for r in task_rows if "weights_localisation_median" in r]
        if localised:
            names = [n for n in names if n in localised[0]["weights_localisation_median"]]
            print(f"\n{task}: median localisation ROC-AUC of the attention weights of each test bag's class\n")
            print("| model | " + " | ".join(names) + " |")
            print("|---|" + "---|" * len(names))
            for r in localised:
                print(f"| {r['model']} | " + " | ".join(f"{r['weights_localisation_median'][n]:.3f}" for n in names)
                      + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(MULTI_TASKS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--workers", type=int, default=1, help="one-thread processes side by side")
    parser.add_argument("--out", default="benchmarks/results/multiclass.json")
    args = parser.parse_args()
    stored = run_cell_grid(run_cell, args.tasks, args.models, args.seeds, Path(args.out), args.workers, summarize)
    print_tables(summarize(stored["cells"]))


if __name__ == "__main__":
    main()
