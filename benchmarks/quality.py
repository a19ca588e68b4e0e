"""Classic MIL benchmarks under the ABMIL paper's protocol: 10-fold CV repeated 5 times.

Datasets MUSK1, MUSK2, ELEPHANT (``pip install 'arcmil[benchmarks]'``). Inside each training fold
20% is held out for early stopping and the threshold; the test fold is never seen. One preset for
every model and dataset (documented in README): features standardised on the training part,
batch 1 (as in the ABMIL paper; bags differ in size up to 1,044 instances), lr 2e-4, at most 50
epochs, patience 10, Transformers with ``pos_enc=none`` (instances are unordered). Accuracy is
reported at 0.5 (the papers' convention) and at the validation-tuned threshold. The JSON is
rewritten after every (dataset, model) cell, so an interrupted run keeps what it finished.

    python benchmarks/quality.py                       # full protocol
    python benchmarks/quality.py --quick               # 5-fold, one repeat

``--tune N``: nested CV instead of the fixed preset. Inside every outer training fold, ``N`` Optuna
trials search the model's default space (arcmil.tune; each trial scored on that fold's validation
part), then the best configuration is trained once and the outer test fold scored: no choice ever
sees a test fold. ``--workers`` runs (dataset, model) cells as one-thread processes side by side.

    python benchmarks/quality.py --tune 10 --folds 10 --repeats 1 --models attention_mil,transmil \
        --workers 2 --out benchmarks/results/quality_tuned.json

``--ensemble K``: each model also as an ensemble of K seeds (arcmil.models.ensemble), on the same folds.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from arcmil import load_bags
from arcmil.compare import compared
from arcmil.config import TrainConfig, ensemble_name
from arcmil.cv import run_cv
from arcmil.pipeline import environment
from arcmil.settings import SearchConfig, eval_config, train_config

DATASETS = ("musk1", "musk2", "elephant")
MODELS = ("attention_mil", "attention_mil_gated", "transformer_mil", "transformer_mil_topk", "transmil",
          "transmil_dual", "instance_max")
PRESET = {"normalize": "standardize", "batch_size": 1, "lr": 2e-4, "epochs": 50, "patience": 10}
PUBLISHED = {  # accuracy, MUSK1 / MUSK2 / ELEPHANT
    "ABMIL attention (Ilse et al. 2018)": (0.892, 0.858, 0.868),
    "ABMIL gated attention (Ilse et al. 2018)": (0.900, 0.863, 0.857),
    "DSMIL (Li et al. 2021)": (0.932, 0.930, 0.925),
}


def run_cell(dataset: str, name: str, folds: int, repeats: int, trials: int | None, threads: int | None,
             space: str | None = None, calibrate: str | None = None, ensemble: int = 1) -> dict:
    """One (dataset, model) cross-validation (nested when ``trials``; each final model an ensemble of
    ``ensemble`` seeds when > 1, the cell then named ``<model>_ens<K>``): its summary cell."""
    if threads:
        torch.set_num_threads(threads)
    tic = time.perf_counter()
    bags = load_bags(f"mil:{dataset}")
    settings = {"pos_enc": "none"} if name.startswith("trans") else {}
    search = SearchConfig(trials=trials, space=space) if trials else None
    preset = {**PRESET, **({"calibrate": calibrate} if calibrate else {})}
    cv = run_cv(bags, name, train_config({"progress": False, "ensemble": ensemble, **preset}),
                evaluation=eval_config(preset),
                folds=folds, seeds=list(range(repeats)), search=search, **settings)
    s = cv.summary
    cell = {"tag": cv.tag, "seconds": time.perf_counter() - tic,
            "accuracy_at_0.5": s["at_0.5"]["accuracy"], "accuracy_at_val_threshold": s["at_val_threshold"]["accuracy"],
            "roc_auc": s["at_0.5"]["roc_auc"], "f1_at_val_threshold": s["at_val_threshold"]["f1"]}
    if search:
        cell["chosen"] = [{"repeat": r["repeat"], "fold": r["fold"], **r["search"]} for r in cv.folds]
    name = ensemble_name(name, ensemble)
    print(f"{dataset:9s} {name:22s} acc@0.5 {cell['accuracy_at_0.5']['mean']:.3f} ± "
          f"{cell['accuracy_at_0.5']['std']:.3f}  acc@val-thr {cell['accuracy_at_val_threshold']['mean']:.3f}  "
          f"AUC {cell['roc_auc']['mean']:.3f}  ({cell['seconds']:.0f} s)", flush=True)
    return {"dataset": dataset, "model": name, **cell}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="musk1,elephant,musk2")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="5 folds, 1 repeat")
    parser.add_argument("--tune", type=int, metavar="N", help="nested CV: N search trials inside each outer fold")
    parser.add_argument("--workers", type=int, default=1, help="cells as one-thread processes side by side")
    parser.add_argument("--space", help="with --tune: a search-space YAML (e.g. benchmarks/classic_mil_space.yaml)")
    parser.add_argument("--calibrate", help="the calibration (default: the preset's platt); 'none' decides at 0.5 on "
                        "the model's own sigmoid, a kernel machine's sign rule")
    parser.add_argument("--ensemble", type=int, default=1, help="K > 1: each model also as an ensemble of K seeds "
                        "(cell <model>_ens<K>; its search repeats the single model's, same seeds)")
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    args = parser.parse_args()
    folds, repeats = (5, 1) if args.quick else (args.folds, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    space = args.space or "default search space"
    nested = f"; nested: {args.tune} TPE trials per outer fold ({space})" if args.tune else ""
    preset = {**PRESET, **({"calibrate": args.calibrate} if args.calibrate else {})}
    report = {"protocol": f"{repeats} x {folds}-fold stratified CV, 20% validation inside each training fold{nested}",
              "preset": preset, "repeats": repeats, "trials": args.tune, "published_accuracy": PUBLISHED,
              "environment": environment(), "results": {}}
    start = time.perf_counter()
    entries = compared(args.models.split(","), TrainConfig(ensemble=args.ensemble))  # classical models alone
    cells = [(d, m, entry_cfg.ensemble) for d in args.datasets.split(",") for _, m, entry_cfg in entries]
    threads = 1 if args.workers > 1 else None
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = [pool.submit(run_cell, d, m, folds, repeats, args.tune, threads, args.space, args.calibrate, k)
                for d, m, k in cells]
        for job in as_completed(jobs):  # the JSON is rewritten as each cell finishes
            cell = job.result()
            report["results"].setdefault(cell.pop("dataset"), {})[cell.pop("model")] = cell
            report["total_seconds"] = time.perf_counter() - start
            out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\ntorch threads {torch.get_num_threads()}, {report['total_seconds'] / 60:.1f} min; wrote {out}")


def print_table(report: dict) -> None:
    datasets = list(report["results"])
    spread = "std_of_repeat_means" if report.get("repeats", 5) > 1 else "std"
    print(f"\naccuracy at 0.5, mean over folds ± {spread.replace('_', ' ')} ({report['protocol']})\n")
    print("| model | " + " | ".join(d.upper() for d in datasets) + " |\n|" + "---|" * (len(datasets) + 1))
    models = dict.fromkeys(m for d in datasets for m in report["results"][d])
    for m in models:
        cells = []
        for d in datasets:
            c = report["results"][d].get(m)
            cells.append(f"{c['accuracy_at_0.5']['mean']:.3f} ± {c['accuracy_at_0.5'][spread]:.3f}"
                         if c else "")
        print(f"| arcmil {m} | " + " | ".join(cells) + " |")
    index = {d: i for i, d in enumerate(DATASETS)}  # the published figures cover these sets only
    for name, accs in report["published_accuracy"].items():
        if any(d in index for d in datasets):
            print(f"| {name} | " + " | ".join(f"{accs[index[d]]:.3f}" if d in index else "" for d in datasets) + " |")


if __name__ == "__main__":
    main()
