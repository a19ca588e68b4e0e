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
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from arcmil import load_bags
from arcmil.cv import run_cv
from arcmil.pipeline import environment
from arcmil.settings import eval_config, train_config

DATASETS = ("musk1", "musk2", "elephant")
MODELS = ("attention_mil", "attention_mil_gated", "transformer_mil", "transformer_mil_topk", "transmil",
          "transmil_dual", "instance_max")
PRESET = {"normalize": "standardize", "batch_size": 1, "lr": 2e-4, "epochs": 50, "patience": 10}
PUBLISHED = {  # accuracy, MUSK1 / MUSK2 / ELEPHANT
    "ABMIL attention (Ilse et al. 2018)": (0.892, 0.858, 0.868),
    "ABMIL gated attention (Ilse et al. 2018)": (0.900, 0.863, 0.857),
    "DSMIL (Li et al. 2021)": (0.932, 0.930, 0.925),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="musk1,elephant,musk2")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="5 folds, 1 repeat")
    parser.add_argument("--out", default="benchmarks/results/quality.json")
    args = parser.parse_args()
    folds, repeats = (5, 1) if args.quick else (args.folds, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"protocol": f"{repeats} x {folds}-fold stratified CV, 20% validation inside each training fold",
              "preset": PRESET, "published_accuracy": PUBLISHED, "environment": environment(), "results": {}}
    start = time.perf_counter()
    for dataset in args.datasets.split(","):
        bags = load_bags(f"mil:{dataset}")
        for name in args.models.split(","):
            tic = time.perf_counter()
            settings = {"pos_enc": "none"} if name.startswith("trans") else {}
            cv = run_cv(bags, name, train_config({"progress": False, **PRESET}), evaluation=eval_config(PRESET),
                        folds=folds, seeds=list(range(repeats)), **settings)
            s = cv.summary
            cell = {"tag": cv.tag, "seconds": time.perf_counter() - tic,
                    "accuracy_at_0.5": s["at_0.5"]["accuracy"],
                    "accuracy_at_val_threshold": s["at_val_threshold"]["accuracy"],
                    "roc_auc": s["at_0.5"]["roc_auc"], "f1_at_val_threshold": s["at_val_threshold"]["f1"]}
            report["results"].setdefault(dataset, {})[name] = cell
            report["total_seconds"] = time.perf_counter() - start
            out.write_text(json.dumps(report, indent=2))
            print(f"{dataset:9s} {name:22s} acc@0.5 {cell['accuracy_at_0.5']['mean']:.3f} ± "
                  f"{cell['accuracy_at_0.5']['std_of_repeat_means']:.3f}  acc@val-thr "
                  f"{cell['accuracy_at_val_threshold']['mean']:.3f}  AUC {cell['roc_auc']['mean']:.3f}  "
                  f"({cell['seconds']:.0f} s)", flush=True)
    print_table(report)
    print(f"\ntorch threads {torch.get_num_threads()}, {report['total_seconds'] / 60:.1f} min; wrote {out}")


def print_table(report: dict) -> None:
    datasets = list(report["results"])
    print(f"\naccuracy at 0.5, mean over folds ± std of the repeat means ({report['protocol']})\n")
    print("| model | " + " | ".join(d.upper() for d in datasets) + " |\n|" + "---|" * (len(datasets) + 1))
    models = dict.fromkeys(m for d in datasets for m in report["results"][d])
    for m in models:
        cells = []
        for d in datasets:
            c = report["results"][d].get(m)
            cells.append(f"{c['accuracy_at_0.5']['mean']:.3f} ± {c['accuracy_at_0.5']['std_of_repeat_means']:.3f}"
                         if c else "")
        print(f"| arcmil {m} | " + " | ".join(cells) + " |")
    for name, accs in report["published_accuracy"].items():
        index = {d: i for i, d in enumerate(DATASETS)}
        print(f"| {name} | " + " | ".join(f"{accs[index[d]]:.3f}" for d in datasets) + " |")


if __name__ == "__main__":
    main()
