"""Faithfulness of each explanation method, per model and task: AOPCR (arcmil.faithfulness).

Each cell trains one model on one generated task with the default recipe (``run_experiment``,
``TrainConfig(seed=seed)``, data seed = training seed), explains the positive test documents with every
method (``explain_bags``: the model's weights, occlusion, integrated gradients with 32 steps) and scores
them as ``arcmil explain`` does: the deletion curve of the bag's logit as the top-ranked windows are
masked out (5% steps up to half the bag), AOPC, and AOPCR = AOPC minus that of 8 random orders. Beside it,
the methods' instance-localisation ROC-AUC (pooled over the positive documents' windows). Per task, model
and method: the median over seeds of the mean AOPCR and of the share of documents where the ranking beats
random. Tasks (``arcmil.tasks``): sparse_presence (a witness window), cooccurrence (two windows together),
order (one window before another) and the demo. Cells are written to the JSON as they finish; a rerun with
the same ``--out`` skips them.

    python benchmarks/faithfulness.py --seeds 0-2 --workers 1 --out benchmarks/results/faithfulness.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from arcmil.explain import METHODS, explain_bags, localisation_auc
from arcmil.faithfulness import faithfulness_frame, summarize
from arcmil.pipeline import EvalConfig, run_experiment
from arcmil.tasks import make_task
from arcmil.train import TrainConfig

from recipe import run_cell_grid  # beside this script

TASKS = ("sparse_presence", "cooccurrence", "order", "demo")
MODELS = ("attention_mil", "transformer_mil", "transmil")


def run_cell(task: str, model: str, seed: int) -> dict:
    torch.set_num_threads(1)
    tic = time.perf_counter()
    result = run_experiment(make_task(task, seed=seed), model, TrainConfig(seed=seed, progress=False),
                            evaluation=EvalConfig(n_bootstrap=0))
    test = result.parts["test"]
    positive = test.subset(np.flatnonzero(test.labels == 1))
    frame = explain_bags(result.model, positive, METHODS, normalizer=result.normalizer, steps=32)
    pooled = summarize(*faithfulness_frame(result.model, positive, frame, METHODS, result.normalizer))["methods"]
    localisation = localisation_auc(frame, METHODS)
    return {"task": task, "model": model, "seed": seed, "test_roc_auc": result.test["roc_auc"],
            "n_documents": len(positive),
            **{method: {"aopcr": pooled[method]["aopcr"], "aopc": pooled[method]["aopc"],
                        "aopc_random": pooled[method]["aopc_random"], "beats_random": pooled[method]["beats_random"],
                        "localisation": localisation[method]["pooled"]} for method in METHODS},
            "seconds": time.perf_counter() - tic}


def summarize_cells(cells: list[dict]) -> list[dict]:
    rows = []
    for task in dict.fromkeys(c["task"] for c in cells):
        for model in dict.fromkeys(c["model"] for c in cells):
            cell = [c for c in cells if (c["task"], c["model"]) == (task, model)]
            if not cell:
                continue
            row = {"task": task, "model": model, "seeds": len(cell),
                   "test_roc_auc_median": float(np.median([c["test_roc_auc"] for c in cell]))}
            for method in METHODS:
                for key in ("aopcr", "beats_random", "localisation"):
                    row[f"{method}_{key}_median"] = float(np.median([c[method][key] for c in cell]))
                row[f"{method}_aopcr_worst"] = float(np.min([c[method]["aopcr"] for c in cell]))
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| task | model | test ROC-AUC | " + " | ".join(f"{m}: AOPCR median (worst) / beats random / localisation"
                                                       for m in METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for r in rows:
        cells = [f"{r[f'{m}_aopcr_median']:.3f} ({r[f'{m}_aopcr_worst']:.3f}) / {r[f'{m}_beats_random_median']:.2f} / "
                 f"{r[f'{m}_localisation_median']:.3f}" for m in METHODS]
        print(f"| {r['task']} | {r['model']} | {r['test_roc_auc_median']:.3f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--workers", type=int, default=1, help="one-thread processes side by side")
    parser.add_argument("--out", default="benchmarks/results/faithfulness.json")
    parser.add_argument("--from", dest="stored", action="store_true", help="print the stored table of --out only")
    args = parser.parse_args()
    if args.stored:
        if not Path(args.out).exists():
            parser.error(f"{args.out}: no stored results to print")
        stored = json.loads(Path(args.out).read_text())
    else:
        stored = run_cell_grid(run_cell, args.tasks, args.models, args.seeds, Path(args.out), args.workers,
                               summarize_cells)
    print_table(summarize_cells(stored["cells"]))


if __name__ == "__main__":
    main()
