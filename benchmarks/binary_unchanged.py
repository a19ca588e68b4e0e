"""Binary runs, recorded whole, to check that a change leaves every binary number as it was.

Runs the demo and imbalanced tasks (400 documents, seed 1) with attention_mil, transformer_mil,
transformer_mil_topk and transmil for 3 epochs (200 bootstrap resamples, one torch thread) and writes each
run's results (metrics, history, calibration, threshold, intervals; not timings, dates or the model config)
and predictions.
Run it in two checkouts, then compare:

    python benchmarks/binary_unchanged.py --out before.json          # in a checkout of the older commit
    python benchmarks/binary_unchanged.py --out after.json
    python benchmarks/binary_unchanged.py --compare before.json after.json
"""
from __future__ import annotations

import argparse
import json

import torch

TASKS = ("demo", "imbalanced")
MODELS = ("attention_mil", "transformer_mil", "transformer_mil_topk", "transmil")


def record() -> dict:
    from arcmil.pipeline import EvalConfig, run_experiment
    from arcmil.report import clean_json
    from arcmil.tasks import make_task
    from arcmil.train import TrainConfig

    torch.set_num_threads(1)
    out = {}
    for task in TASKS:
        for model in MODELS:
            result = run_experiment(make_task(task, seed=1, n_bags=400), model, TrainConfig(seed=1, epochs=3,
                                    progress=False), evaluation=EvalConfig(n_bootstrap=200))
            results = clean_json(result.to_dict())
            for key in ("train_seconds", "created", "environment", "model_config"):
                results.pop(key)
            for row in results["history"]:
                row.pop("seconds")
            out[f"{task}/{model}"] = {"results": results,
                                      "predictions": result.predictions.to_dict(orient="list")}
    return out


def compare(before: dict, after: dict) -> bool:
    same = True
    for run in before:
        a, b = before[run], after.get(run, {})
        keys = sorted(k for k in set(a["results"]) | set(b.get("results", {}))
                      if a["results"].get(k) != b.get("results", {}).get(k))
        predictions = a["predictions"] == b.get("predictions")
        print(f"{run}: {'identical' if not keys and predictions else 'DIFFERENT'}"
              f"{f' (results: {keys})' if keys else ''}{'' if predictions else ' (predictions differ)'}")
        same &= not keys and predictions
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.load(open(path)) for path in args.compare)
        raise SystemExit(0 if compare(before, after) else 1)
    with open(args.out, "w") as f:
        json.dump(record(), f, sort_keys=True)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
