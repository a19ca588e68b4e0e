"""Does each model respect the MIL assumption? Raff & Holt's three algorithmic unit tests.

Every model is trained on the test's training bags (20% held out for early stopping) and scored on
its test bags. A model passes a test when its test ROC-AUC is at least 0.5 (it does not rank the
test positives below the negatives). Same preset for every model: 20 epochs, patience 5, no input
normalisation, ``pos_enc=none`` (the windows are unordered).

    python benchmarks/mil_assumption.py --seeds 0,1,2 --out benchmarks/results/mil_assumption.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from arcmil.pipeline import environment, run_experiment
from arcmil.synthetic import TESTS, make_assumption_test, with_splits
from arcmil.settings import eval_config, train_config

MODELS = ("instance_max", "attention_mil", "attention_mil_gated", "transformer_mil", "transformer_mil_topk",
          "transmil", "transmil_dual")
PRESET = {"epochs": 20, "patience": 5, "normalize": "none"}


def model_settings(name: str) -> dict:
    return {"pos_enc": "none"} if name.startswith("trans") else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tests", default=",".join(TESTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="benchmarks/results/mil_assumption.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    for test in args.tests.split(","):
        for seed in seeds:
            bags = with_splits(*make_assumption_test(test, seed=seed), seed=seed)
            for name in args.models.split(","):
                tic = time.perf_counter()
                result = run_experiment(bags, name, train_config({"seed": seed, "progress": False, **PRESET}),
                                        evaluation=eval_config({"n_bootstrap": 0, **PRESET}), **model_settings(name))
                auc = result.test["roc_auc"]
                runs.append({"test": test, "seed": seed, "model": name, "tag": result.tag, "test_roc_auc": auc,
                             "passed": auc >= 0.5, "seconds": time.perf_counter() - tic})
                print(f"{test} seed {seed} {name}: AUC {auc:.3f} {'pass' if auc >= 0.5 else 'FAIL'}", flush=True)
    models, tests = args.models.split(","), args.tests.split(",")
    summary = {}
    for m in models:
        summary[m] = {}
        for t in tests:
            cell = [r for r in runs if (r["model"], r["test"]) == (m, t)]
            summary[m][t] = {"median_auc": float(np.median([r["test_roc_auc"] for r in cell])),
                             "passed": sum(r["passed"] for r in cell), "runs": len(cell)}
    print(f"\n{len(seeds)} seeds, torch threads {torch.get_num_threads()}; median test ROC-AUC (passed/runs)\n")
    print("| model | " + " | ".join(tests) + " |\n|" + "---|" * (len(tests) + 1))
    for m in models:
        cells = [f"{s['median_auc']:.3f} ({s['passed']}/{s['runs']})" for s in summary[m].values()]
        print(f"| {m} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": PRESET, "seeds": seeds, "environment": environment(), "summary": summary,
                               "runs": runs}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
