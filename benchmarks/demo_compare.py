"""Quality and wall time of the three models on the built-in demo data, several seeds.

Runs exactly what ``arcmil compare`` runs (the library's run_experiment), prints a Markdown table
(median and min-max over seeds) and writes JSON.

    python benchmarks/demo_compare.py --seeds 0,1,2 --out benchmarks/results/demo_compare.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from arcmil.demo import make_demo_bags
from arcmil.pipeline import environment, run_experiment
from arcmil.train import TrainConfig

METRICS = ("test_roc_auc", "test_pr_auc", "test_f1", "test_precision", "test_recall", "seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="attention_mil,transformer_mil,transmil")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="benchmarks/results/demo_compare.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    bags = make_demo_bags()
    runs = []
    for name in args.models.split(","):
        for seed in seeds:
            tic = time.perf_counter()
            result = run_experiment(bags, name, TrainConfig(seed=seed, progress=False))
            test = result.test
            runs.append({"model": name, "tag": result.tag, "seed": seed, "seconds": time.perf_counter() - tic,
                         "best_epoch": result.best_epoch,
                         **{f"test_{m}": test[m] for m in ("roc_auc", "pr_auc", "f1", "precision", "recall")}})
            print(f"{name} seed {seed}: roc_auc {test['roc_auc']:.4f} f1 {test['f1']:.4f} "
                  f"({runs[-1]['seconds']:.1f} s)", flush=True)
    summary = {}
    for name in args.models.split(","):
        rows = [r for r in runs if r["model"] == name]
        summary[name] = {m: {"median": float(np.median([r[m] for r in rows])), "min": min(r[m] for r in rows),
                             "max": max(r[m] for r in rows)} for m in METRICS}
    header = "| model | " + " | ".join(METRICS) + " |"
    print(f"\n{len(seeds)} seeds ({args.seeds}), torch threads {torch.get_num_threads()}; median (min–max)\n")
    print(header + "\n|" + "---|" * (len(METRICS) + 1))
    for name, stats in summary.items():
        cells = [f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})" if m != "seconds" else f"{s['median']:.1f}"
                 for m, s in stats.items()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": bags.source, "seeds": seeds, "environment": environment(),
                               "summary": summary, "runs": runs}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
