"""Which explanation method points at the truly positive windows? Scored on the demo data.

Each model is trained on the demo data (seed 0, default settings, as ``arcmil compare``); its test
bags are explained by the model's own weights, occlusion and integrated gradients; the
instance-localisation ROC-AUC over the windows of positive test bags is reported per method.

    python benchmarks/explain_demo.py --out benchmarks/results/explain_demo.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from arcmil.demo import make_demo_bags
from arcmil.explain import METHODS, explain_bags, localisation_auc
from arcmil.pipeline import environment, run_experiment
from arcmil.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="attention_mil,transformer_mil,transmil,transformer_mil_topk,transmil_dual")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ig-steps", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/explain_demo.json")
    args = parser.parse_args()
    bags = make_demo_bags()
    results = {}
    for name in args.models.split(","):
        result = run_experiment(bags, name, TrainConfig(seed=args.seed, progress=False))
        frame = explain_bags(result.model, result.parts["test"], normalizer=result.normalizer, steps=args.ig_steps)
        scores = localisation_auc(frame)
        best = max(METHODS, key=lambda m: scores[m]["pooled"])
        results[name] = {"tag": result.tag, "test_roc_auc": result.test["roc_auc"], "best": best,
                         "localisation": scores}
        print(f"{name}: " + "  ".join(f"{m} {scores[m]['pooled']:.3f}" for m in METHODS) + f"  -> {best}", flush=True)
    print(f"\ninstance-localisation ROC-AUC (pooled over windows of positive test bags); torch threads "
          f"{torch.get_num_threads()}\n")
    print("| model | bag test ROC-AUC | " + " | ".join(METHODS) + " | best |\n|" + "---|" * (len(METHODS) + 3))
    for name, r in results.items():
        cells = [f"{r['localisation'][m]['pooled']:.3f}" for m in METHODS]
        print(f"| {name} | {r['test_roc_auc']:.3f} | " + " | ".join(cells) + f" | {r['best']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": bags.source, "seed": args.seed, "ig_steps": args.ig_steps,
                               "environment": environment(), "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
