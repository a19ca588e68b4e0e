"""Calibration methods judged on held-out data: test expected calibration error and Brier score of the
uncalibrated probabilities (``none``), Platt's map, temperature scaling and isotonic regression, each
fitted on the validation split exactly as ``arcmil train --calibrate METHOD`` fits it, plus test F1 at
the threshold tuned on the calibrated validation scores. The multi-class and multi-label tasks
(``--tasks multiclass4,multilabel5``) get their label space's family (arcmil.calibration: vector scaling
for ``platt`` on classes, one map per label); isotonic has no multi-class form ("–"); their ECE is the
top class's (multi-class) or over every (bag, label) pair, their F1 macro.

Training does not depend on the calibration, so each (task, seed, model) cell trains once
(``run_experiment`` with the default recipe, ``TrainConfig(seed=seed)``) and applies every method to
that run's validation and test logits. Per task, model and method the table shows the median and
worst seed.

    python benchmarks/calibration.py --seeds 0-4 --workers 2 --out benchmarks/results/calibration.json

The table also gives Platt's ECE minus temperature's, seed by seed (the median of the paired
differences: a fairer test of "Platt lowers ECE" than the difference of two medians). ``--from JSON``
prints the table of a stored run without training again.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from arcmil.calibration import CALIBRATIONS, calibration_metrics, fit_calibrator
from arcmil.errors import ConfigError
from arcmil.pipeline import EvalConfig, environment, run_experiment
from arcmil.tasks import make_task
from arcmil.train import TrainConfig

from recipe import parse_seeds  # beside this script

TASKS = ("demo", "imbalanced", "noisy_presence", "sparse_presence")
MODELS = ("attention_mil", "transformer_mil", "transmil")


def run_cell(task: str, model: str, seed: int) -> list[dict]:
    torch.set_num_threads(1)
    tic = time.perf_counter()
    result = run_experiment(make_task(task, seed=seed), model, TrainConfig(seed=seed, progress=False),
                            evaluation=EvalConfig(calibrate="none", n_bootstrap=0))
    val, test, space = result.evaluations["val"], result.evaluations["test"], result.label_space
    rows = []
    for method in CALIBRATIONS:
        try:
            calibrator = fit_calibrator(method, val.labels, val.logits, space)
        except ConfigError:  # isotonic has no multi-class form
            continue
        val_probs, test_probs = calibrator(val.logits), calibrator(test.logits)
        threshold = space.tune_threshold(val.labels, val_probs)
        rows.append({"task": task, "model": model, "seed": seed, "method": method,
                     **{f"test_{k}": v for k, v in calibration_metrics(test.labels, test_probs, space).items()},
                     "test_f1": space.metrics(test.labels, test_probs, threshold)["f1"],
                     "seconds": time.perf_counter() - tic})
    return rows


def summarize(runs: list[dict]) -> list[dict]:
    """Per (task, model, method): median and worst seed of test ECE and Brier (worst = highest), median F1,
    and the median over seeds of this method's ECE minus temperature's on the same seed."""
    rows = []
    for key in sorted({(r["task"], r["model"], r["method"]) for r in runs}, key=lambda k: (k[0], k[1],
                                                                                             CALIBRATIONS.index(k[2]))):
        cell = [r for r in runs if (r["task"], r["model"], r["method"]) == key]
        ece, brier = [r["test_ece"] for r in cell], [r["test_brier"] for r in cell]
        temperature = {r["seed"]: r["test_ece"] for r in runs
                       if (r["task"], r["model"], r["method"]) == (key[0], key[1], "temperature")}
        rows.append({"task": key[0], "model": key[1], "method": key[2], "seeds": len(cell),
                     "ece_median": float(np.median(ece)), "ece_worst": float(np.max(ece)),
                     "brier_median": float(np.median(brier)), "brier_worst": float(np.max(brier)),
                     "f1_median": float(np.median([r["test_f1"] for r in cell])),
                     "ece_minus_temperature_median": float(np.median([r["test_ece"] - temperature[r["seed"]]
                                                                      for r in cell]))})
    return rows


def print_table(summary: list[dict]) -> None:
    """One row per task and model, one column per method for each of ECE, Brier and F1."""
    cells = {(r["task"], r["model"], r["method"]): r for r in summary}
    print("| task | model | " + " | ".join(f"{what}: {m}" for what in ("ECE", "Brier", "F1") for m in CALIBRATIONS)
          + " | ECE: platt − temperature, paired |")
    print("|---|---|" + "---|" * (3 * len(CALIBRATIONS) + 1))
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in summary):
        row = [cells.get((task, model, m)) for m in CALIBRATIONS]  # no isotonic beyond binary and multi-label
        print(f"| {task} | {model} | " + " | ".join(
            [f"{r['ece_median']:.3f} ({r['ece_worst']:.3f})" if r else "–" for r in row]
            + [f"{r['brier_median']:.3f}" if r else "–" for r in row] + [f"{r['f1_median']:.3f}" if r else "–" for r in row]
            + [f"{cells[(task, model, 'platt')]['ece_minus_temperature_median']:+.4f}"]) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--workers", type=int, default=1, help="one-thread processes side by side")
    parser.add_argument("--out", default="benchmarks/results/calibration.json")
    parser.add_argument("--from", dest="stored", help="a JSON this script wrote: print its table, train nothing")
    args = parser.parse_args()
    if args.stored:
        stored = json.loads(Path(args.stored).read_text())
        print(f"{len(stored['seeds'])} seeds (stored in {args.stored})\n")
        print_table(summarize(stored["runs"]))
        return
    cells = [(t, m, s) for t in args.tasks.split(",") for m in args.models.split(",") for s in parse_seeds(args.seeds)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = [row for rows in pool.map(run_cell, *zip(*cells)) for row in rows]
    summary = summarize(runs)
    print(f"{len(parse_seeds(args.seeds))} seeds, 1 thread per process, {args.workers} processes; test split: "
          "median (worst seed) ECE, median Brier, median F1\n")
    print_table(summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "seeds": parse_seeds(args.seeds),
                               "total_seconds": time.perf_counter() - start, "summary": summary, "runs": runs},
                              indent=2))
    print(f"\nwritten to {out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
