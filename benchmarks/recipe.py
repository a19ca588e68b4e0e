"""The default recipe, judged across tasks and seeds: does every model learn what it can at the note's budget?

Every (task, seed, model) cell runs exactly what ``arcmil train`` runs (``run_experiment``) on
``arcmil.tasks.make_task(task, seed=seed)`` with ``TrainConfig(seed=seed)``: data seed and training
seed both vary. Two reference rows per task, ``note_transformer_mil`` and ``note_transmil``, train the
design note's own models with the note's plain loop, written below: per-item ``DataLoader``, Adam
lr 1e-3, batch 16, at most 10 epochs, early stopping on validation loss with patience 3, threshold
tuned on validation. Per task and model the table shows test ROC-AUC median and worst seed, median
F1, median best epoch and median seconds per run. Cells are written to the JSON as they finish, and
a rerun with the same ``--out`` and ``--label`` skips the cells it already has. A second table checks
every Transformer cell against the targets: worst seed within 0.02 of the median, median at least
the note's own model of its family, co-occurrence and order medians at least 0.98.

    python benchmarks/recipe.py --seeds 0-9 --workers 2 --out benchmarks/results/recipe.json
    python benchmarks/recipe.py --models transmil --set warmup_epochs=0 --label no_warmup ...   # ablation
    python benchmarks/recipe.py --rerun-worst defaults --models transformer_mil,transmil --workers 2

``--set key=value`` overrides a training or model setting (the names of ``arcmil train --config``).
``--workers N`` runs N one-thread processes side by side.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from arcmil.data import assign_split, split_parts
from arcmil.metrics import binary_metrics, tune_threshold
from arcmil.models import model_names
from arcmil.pipeline import environment, run_experiment
from arcmil.settings import eval_config, model_overrides, train_config
from arcmil.tasks import TASKS, make_task
from arcmil.train import seed_everything

from note_models import NoteTransformerMIL, NoteTransMIL, note_scores, train_note_loop  # beside this script

REFERENCES = ("note_transformer_mil", "note_transmil")


# ---------------------------------------------------------------- the design note's loop
def _pad_collate(items):
    """The note's models take no mask: bags of unequal length are zero-padded (the note cannot do better)."""
    xs, ys = zip(*items)
    return nn.utils.rnn.pad_sequence(xs, batch_first=True), torch.stack(ys)


def note_reference(name: str, bags, seed: int) -> dict:
    """Train the note's model ``name`` with the note's loop; test metrics at the validation threshold."""
    seed_everything(seed)
    parts = split_parts(assign_split(bags, seed))
    sets = {k: [(torch.from_numpy(np.asarray(b, np.float32)), torch.tensor(float(y)))
                for b, y in zip(part.bags, part.labels)] for k, part in parts.items()}
    generator = torch.Generator().manual_seed(seed)
    loaders = {k: DataLoader(v, batch_size=16, shuffle=k == "train", generator=generator, collate_fn=_pad_collate)
               for k, v in sets.items()}
    model = (NoteTransformerMIL if name == "note_transformer_mil" else NoteTransMIL)(input_dim=bags.dim)
    labels = parts["train"].labels
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(labels) - labels.sum()) / labels.sum()))
    best_epoch = train_note_loop(model, loaders, criterion, epochs=10, patience=3)
    val_probs, val_y, _ = note_scores(model, loaders["val"], criterion)
    test_probs, test_y, _ = note_scores(model, loaders["test"], criterion)
    return {**binary_metrics(test_y, test_probs, tune_threshold(val_y, val_probs)), "best_epoch": best_epoch}


# ---------------------------------------------------------------- cells, table, JSON
def run_cell(task: str, model: str, seed: int, settings: dict) -> dict:
    torch.set_num_threads(1)
    tic = time.perf_counter()
    bags = make_task(task, seed=seed)
    if model in REFERENCES:
        test = note_reference(model, bags, seed)
        best_epoch = test["best_epoch"]
    else:
        result = run_experiment(bags, model, train_config({"seed": seed, "progress": False, **settings}),
                                evaluation=eval_config(settings), **model_overrides(model, settings, strict=False))
        test, best_epoch = result.test, result.best_epoch
    return {"task": task, "model": model, "seed": seed, "roc_auc": test["roc_auc"], "f1": test["f1"],
            "best_epoch": best_epoch, "seconds": time.perf_counter() - tic}


def summarize(runs: list[dict]) -> dict:
    """{task: {model: median/worst ROC-AUC, median F1, best epoch and seconds, seeds}}."""
    out = {}
    for r in runs:
        out.setdefault(r["task"], {}).setdefault(r["model"], []).append(r)
    return {task: {model: {"roc_auc_median": float(np.median([r["roc_auc"] for r in rows])),
                           "roc_auc_worst": min(r["roc_auc"] for r in rows),
                           "worst_seed": min(rows, key=lambda r: r["roc_auc"])["seed"],
                           "f1_median": float(np.median([r["f1"] for r in rows])),
                           "best_epoch_median": float(np.median([r["best_epoch"] for r in rows])),
                           "seconds_median": float(np.median([r["seconds"] for r in rows])), "seeds": len(rows)}
                   for model, rows in models.items()}
            for task, models in out.items()}


def print_table(summary: dict) -> None:
    print("| task | model | ROC-AUC median | worst (seed) | F1 median | best epoch | s/run |")
    print("|---|---|---|---|---|---|---|")
    for task, models in summary.items():
        for model, s in models.items():
            print(f"| {task} | {model} | {s['roc_auc_median']:.3f} | {s['roc_auc_worst']:.3f} ({s['worst_seed']}) | "
                  f"{s['f1_median']:.3f} | {s['best_epoch_median']:g} | {s['seconds_median']:.1f} |")


def note_reference_of(model: str) -> str:
    """The note's row a model is held to: its own family's (TransMIL variants against the note's TransMIL)."""
    return "note_transmil" if model.startswith("transmil") else "note_transformer_mil"


def print_targets(summary: dict) -> None:
    """Issue targets per Transformer cell: worst seed within 0.02 of the median, median at least the
    note's own model in its plain loop; co-occurrence and order medians at least 0.98."""
    print("| task | model | median − worst | ≤ 0.02 | median − note reference | ≥ 0 | ≥ 0.98 where asked |")
    print("|---|---|---|---|---|---|---|")
    for task, models in summary.items():
        for model, s in models.items():
            if not model.startswith("trans"):
                continue
            spread = s["roc_auc_median"] - s["roc_auc_worst"]
            reference = models.get(note_reference_of(model))  # absent unless run with --models … note_*
            gap = s["roc_auc_median"] - reference["roc_auc_median"] if reference else None
            floor = "yes" if s["roc_auc_median"] >= 0.98 else "**no**"
            gap_text, gap_ok = ("–", "–") if gap is None else (f"{gap:+.4f}", "yes" if gap >= 0 else "**no**")
            print(f"| {task} | {model} | {spread:.3f} | {'yes' if spread <= 0.02 else '**no**'} | {gap_text} | "
                  f"{gap_ok} | {floor if task in ('cooccurrence', 'order') else '–'} |")


def print_ablation(saved: dict, labels: list[str], tasks: list[str], models: list[str], seeds: list[int]) -> None:
    """Median / worst test ROC-AUC of each recipe on the same (task, model, seed) cells."""
    print("| task | model | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for task in tasks:
        for model in models:
            cells = []
            for label in labels:
                auc = [r["roc_auc"] for r in saved["recipes"][label]["runs"]
                       if (r["task"], r["model"]) == (task, model) and r["seed"] in seeds]
                cells.append(f"{np.median(auc):.3f} / {min(auc):.3f}" if len(auc) == len(seeds) else "–")
            print(f"| {task} | {model} | " + " | ".join(cells) + " |")


def rerun_worst(saved: dict, label: str, tasks: list[str], models: list[str], workers: int) -> list[dict]:
    """Re-run each (task, model)'s worst seed of the saved recipe ``label`` with today's code and its
    settings; print the recorded and the new ROC-AUC, F1 and best epoch side by side."""
    recipe = saved["recipes"][label]
    worst = {}
    for r in recipe["runs"]:
        if r["task"] in tasks and r["model"] in models and r["model"] not in REFERENCES:
            key = (r["task"], r["model"])
            worst[key] = min(worst.get(key, r), r, key=lambda row: (row["roc_auc"], row["seed"]))
    cells = sorted(worst.values(), key=lambda r: (r["task"], r["model"]))
    with ProcessPoolExecutor(workers) as pool:
        again = list(pool.map(run_cell, [r["task"] for r in cells], [r["model"] for r in cells],
                              [r["seed"] for r in cells], [recipe["settings"]] * len(cells)))
    print(f"| task | model | seed | ROC-AUC ({label}) | now | F1 ({label}) | now | best epoch ({label}) | now |")
    print("|---|---|---|---|---|---|---|---|---|")
    for old, new in zip(cells, again):
        print(f"| {old['task']} | {old['model']} | {old['seed']} | {old['roc_auc']:.4f} | {new['roc_auc']:.4f} | "
              f"{old['f1']:.4f} | {new['f1']:.4f} | {old['best_epoch']} | {new['best_epoch']} |")
    return again


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '0,3,5'."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def run_cell_grid(run_cell, tasks: str, models: str, seeds: str, out: Path, workers: int, summarize) -> dict:
    """``run_cell(task, model, seed)`` for every cell of the comma lists ``tasks`` and ``models`` and the
    ``seeds`` range that the JSON ``out`` does not hold yet, as ``workers`` one-thread processes side by
    side; ``out`` is rewritten after each cell with its 'cells' and their ``summarize`` (a rerun resumes).
    Returns the stored record."""
    stored = json.loads(out.read_text()) if out.exists() else {"cells": []}
    done = {(c["task"], c["model"], c["seed"]) for c in stored["cells"]}
    todo = [(t, m, s) for t in tasks.split(",") for m in models.split(",") for s in parse_seeds(seeds)
            if (t, m, s) not in done]
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        for cell in pool.map(run_cell, *zip(*todo)) if todo else ():
            stored["cells"].append(cell)
            stored.update(environment=environment(), summary=summarize(stored["cells"]))
            out.write_text(json.dumps(stored, indent=2))
    print(f"{len(stored['cells'])} cells ({len(todo)} run now in {time.perf_counter() - start:.0f} s, "
          f"{workers} one-thread processes)\n")
    return stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=",".join([*model_names(), *REFERENCES]))
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training or model setting (repeatable)")
    parser.add_argument("--label", default="defaults", help="name of this recipe in the JSON")
    parser.add_argument("--workers", type=int, default=1, help="one-thread processes side by side")
    parser.add_argument("--out", default="benchmarks/results/recipe.json")
    parser.add_argument("--ablation", metavar="LABEL,LABEL,...",
                        help="run nothing: print median / worst test ROC-AUC of these saved recipes side by side")
    parser.add_argument("--rerun-worst", metavar="LABEL",
                        help="re-run the worst seed of each task and model of a saved recipe with today's code; "
                             "print old and new side by side (the JSON is not changed)")
    args = parser.parse_args()
    settings = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.exists() else {"recipes": {}}
    if args.ablation:
        print_ablation(saved, args.ablation.split(","), args.tasks.split(","), args.models.split(","),
                       parse_seeds(args.seeds))
        return
    if args.rerun_worst:
        rerun_worst(saved, args.rerun_worst, args.tasks.split(","), args.models.split(","), args.workers)
        return
    recipe = saved["recipes"].setdefault(args.label, {"settings": settings, "runs": []})
    if recipe["settings"] != settings:
        raise SystemExit(f"{out}: recipe {args.label!r} was run with {recipe['settings']}, not {settings}")
    # the note's reference rows do not depend on arcmil's settings: reuse them from any recipe
    for other in saved["recipes"].values():
        known = {(r["task"], r["model"], r["seed"]) for r in recipe["runs"]}
        recipe["runs"] += [r for r in other["runs"] if r["model"] in REFERENCES
                           and (r["task"], r["model"], r["seed"]) not in known]
    done = {(r["task"], r["model"], r["seed"]) for r in recipe["runs"]}
    cells = [(t, m, s) for t in args.tasks.split(",") for s in parse_seeds(args.seeds)
             for m in args.models.split(",") if (t, m, s) not in done]
    saved["environment"] = {**environment(), "torch_threads": 1, "workers": args.workers}
    out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(run_cell, *zip(*cells), [settings] * len(cells)) if cells else []:
            recipe["runs"].append(row)
            print(f"{row['task']} {row['model']} seed {row['seed']}: roc_auc {row['roc_auc']:.4f} "
                  f"epoch {row['best_epoch']} ({row['seconds']:.1f} s)", flush=True)
            recipe["summary"] = summarize(recipe["runs"])
            out.write_text(json.dumps(saved, indent=1))
    wanted = [r for r in recipe["runs"] if r["task"] in args.tasks.split(",") and r["model"] in args.models.split(",")
              and r["seed"] in parse_seeds(args.seeds)]
    print(f"\nrecipe {args.label!r} {settings}; seeds {args.seeds}; 1 torch thread per process, "
          f"{args.workers} process(es)\n")
    print_table(summarize(wanted))
    print()
    print_targets(summarize(wanted))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
