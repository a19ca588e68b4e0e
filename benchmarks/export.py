"""Scoring speed and memory of an exported model: PyTorch (the .pth) against onnxruntime (the .onnx),
both through ``arcmil predict``'s scoring path (``score_bags``: length-sorted batches of 64 bags
under the token budget), at 1 and 2 threads, on 10-window and 1,000-window bags.

Each cell runs in a fresh process (``--cell``) so that its peak resident memory is its own: bags/s
is the median of ``--repeats`` passes after one warm-up pass; ``peak MB`` is the process's maximum
resident set (torch and onnxruntime imported, model loaded, one pass's batches), ``+scoring MB`` its
growth from just before the first pass. Model: TransMIL at the note's size (d_model 128, 2 layers,
4 heads, 256-d windows), untrained (speed does not depend on the weights), exported by
``arcmil export``.

    python benchmarks/export.py --out benchmarks/results/export.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {"10 windows": (10, 2000), "1,000 windows": (1000, 40)}  # bag length -> number of bags


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def run_cell(path: str, windows: int, n_bags: int, threads: int, repeats: int) -> dict:
    """Score ``n_bags`` random bags of ``windows`` windows with the checkpoint or graph at ``path``."""
    import numpy as np
    import torch

    from arcmil.data import BagSet
    from arcmil.predict import OnnxModel
    from arcmil.scoring import score_bags

    torch.set_num_threads(threads)
    if path.endswith(".onnx"):
        model, normalizer = OnnxModel.load(path)[0], None  # the graph normalises
    else:
        from arcmil.checkpoint import load_checkpoint
        from arcmil.data import Normalizer

        model, meta = load_checkpoint(path)
        normalizer = Normalizer.from_dict(meta["normalization"])
    rng = np.random.default_rng(0)
    bags = BagSet([rng.normal(size=(windows, 256)).astype(np.float32) for _ in range(n_bags)], None,
                  np.array([str(i) for i in range(n_bags)]))
    before = rss_mb()
    seconds = []
    for _ in range(repeats + 1):
        tic = time.perf_counter()
        score_bags(model, bags, normalizer)
        seconds.append(time.perf_counter() - tic)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"bags_per_s": n_bags / statistics.median(seconds[1:]), "peak_mb": peak, "scoring_mb": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/export.json")
    parser.add_argument("--cell", nargs=5, metavar=("PATH", "WINDOWS", "BAGS", "THREADS", "REPEATS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        path, *numbers = args.cell
        print(json.dumps(run_cell(path, *map(int, numbers))))
        return

    import torch

    from arcmil.checkpoint import save_checkpoint
    from arcmil.data import Normalizer
    from arcmil.export import export_onnx
    from arcmil.models import build_model
    from arcmil.pipeline import environment

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = build_model("transmil", input_dim=256).eval()
        save_checkpoint(Path(tmp) / "m.pth", model, "transmil", threshold=0.5, threshold_method="f1",
                        normalizer=Normalizer("l2"))
        export_onnx(Path(tmp) / "m.pth", Path(tmp) / "m.onnx")
        for case, (windows, n_bags) in CASES.items():
            for threads in (1, 2):
                for runtime, name in (("PyTorch", "m.pth"), ("onnxruntime", "m.onnx")):
                    cell = [str(Path(tmp) / name), windows, n_bags, threads, args.repeats]
                    proc = subprocess.run([sys.executable, __file__, "--cell", *map(str, cell)], capture_output=True,
                                          text=True, check=True)
                    row = {"bags": case, "threads": threads, "runtime": runtime,
                           **json.loads(proc.stdout.strip().splitlines()[-1])}
                    rows.append(row)
                    print(f"{case:14s} {threads} thread(s) {runtime:12s} {row['bags_per_s']:9.1f} bags/s  "
                          f"peak {row['peak_mb']:6.0f} MB  +scoring {row['scoring_mb']:5.0f} MB", flush=True)
    print("\n| bags | threads | runtime | bags/s | peak MB | +scoring MB |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bags']} | {r['threads']} | {r['runtime']} | {r['bags_per_s']:.1f} | {r['peak_mb']:.0f} | "
              f"{r['scoring_mb']:.0f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "cases": CASES, "rows": rows}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
