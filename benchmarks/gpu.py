"""Speed on a GPU: arcmil's training loop against the note's, bf16, --compile, long bags.

Each case is a fresh process (imports, data loading and outputs included in its wall time) with a
time limit, on random bags of one length (labels random: speed does not depend on them):

- ``note``: benchmarks/notebook_loop.py, the note's TransformerMIL in a plain per-item DataLoader loop,
  each batch moved with ``.to(device)``, Adam, validation each epoch;
- ``fp32`` / ``bf16`` / ``compile`` / ``compile-graphs``: ``arcmil train --model transformer_mil`` with
  ``--precision bf16``, ``--compile`` or ``--compile --compile-mode reduce-overhead``, patience off;

each at 10 windows (``--bags``, default 20,000: the note's setting) and at 1,000 windows
(``--long-bags``, default 1,000), batch 16, a variant at both sizes before the next one. Reported per
case: the training loop's seconds (every epoch with its validation), the first epoch (compilation
included) and the median later epoch, the process's wall seconds. First, one 100,000-window bag
scored alone and with three short bags (5, 7, 9) through arcmil's scoring path: seconds after a
warm-up and ``torch.cuda.max_memory_allocated``. Prints a table; writes benchmarks/results/gpu.json
after every case (a run stopped early keeps what it measured); ``--budget`` bounds the whole run.

    python benchmarks/gpu.py --budget 300                    # one GPU
    python benchmarks/gpu.py --device cpu --quick --out /tmp/gpu.json   # a smoke run of every case on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = {"note": None, "fp32": [], "bf16": ["--precision", "bf16"], "compile": ["--compile"],
            "compile-graphs": ["--compile", "--compile-mode", "reduce-overhead"]}  # CUDA graphs, one per shape


def write_bags(path: Path, n_bags: int, windows: int, seed: int = 0) -> Path:
    """Random (n_bags, windows, 256) bags with random binary labels, as an uncompressed .npz."""
    rng = np.random.default_rng(seed)
    np.savez(path, embeddings=rng.standard_normal((n_bags * windows, 256), dtype=np.float32),
             lengths=np.full(n_bags, windows), labels=rng.integers(0, 2, n_bags),
             bag_ids=np.array([f"b{i}" for i in range(n_bags)]))
    return path


def run_training_case(variant: str, data: Path, out: Path, args, timeout: float) -> dict:
    """One training process; its wall seconds and its loop's seconds (or the time limit it ran past)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    if variant == "note":
        command = [sys.executable, str(HERE / "notebook_loop.py"), str(data), "--epochs", str(args.epochs),
                   "--device", args.device]
    else:
        command = [sys.executable, "-m", "arcmil", "train", "--model", "transformer_mil", "--data", str(data),
                   "--epochs", str(args.epochs), "--patience", str(args.epochs), "--batch-size", "16",
                   "--device", args.device, "--no-progress", "--out", str(out), *VARIANTS[variant]]
    tic = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"did not finish in {timeout:.0f} s"}
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        return {"variant": variant, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    if variant == "note":
        return {"variant": variant, "wall": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}
    results = json.loads((out / "stage3_transformer_mil_results.json").read_text())
    epochs = [row["seconds"] for row in results["history"]]
    return {"variant": variant, "wall": wall, "train_seconds": results["train_seconds"], "first_epoch": epochs[0],
            "later_epoch_median": statistics.median(epochs[1:]) if len(epochs) > 1 else None}


def scoring_case(device: str, lengths: list[int]) -> dict:
    """Score bags of ``lengths`` windows (transformer_mil, exact attention) after a warm-up on short bags."""
    import torch

    from arcmil.data import BagSet
    from arcmil.models import build_model
    from arcmil.scoring import score_bags

    torch.manual_seed(0)
    model = build_model("transformer_mil", input_dim=256).to(device)
    rng = np.random.default_rng(0)

    def bags(ns):
        return BagSet([rng.standard_normal((n, 256)).astype(np.float32) for n in ns], None,
                      np.array([f"b{i}" for i in range(len(ns))]))

    score_bags(model, bags([5, 7, 9]), device=device)  # kernels loaded, allocator warm
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    data = bags(lengths)
    tic = time.perf_counter()
    scored = score_bags(model, data, device=device)  # its results come back to the host: synchronised
    seconds = time.perf_counter() - tic
    assert np.isfinite(scored.probs).all() and [len(w) for w in scored.weights] == lengths
    return {"lengths": lengths, "seconds": seconds,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def run_scoring_case(device: str, lengths: list[int], timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--scoring-case", json.dumps([device, lengths])],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    except subprocess.TimeoutExpired:
        return {"lengths": lengths, "error": f"did not finish in {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"lengths": lengths, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment(device: str) -> dict:
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}


def print_tables(report: dict) -> None:
    print(f"\n{report['environment']['device']}, torch {report['environment']['torch']}, batch 16, "
          f"{report['epochs']} epochs, transformer_mil; loop = every epoch with its validation")
    print("| bags | run | loop s | vs note loop | first epoch s | later epoch s | process s |")
    print("|---|---|---|---|---|---|---|")
    for size, rows in report["training"].items():
        note = next((r["train_seconds"] for r in rows if r["variant"] == "note" and "error" not in r), None)
        for r in rows:
            if "error" in r:
                print(f"| {size} | {r['variant']} | {r['error']} | | | | |")
                continue
            ratio = f"{note / r['train_seconds']:.2f}x" if note else ""
            first = f"{r['first_epoch']:.1f}" if r.get("first_epoch") is not None else ""
            later = f"{r['later_epoch_median']:.1f}" if r.get("later_epoch_median") is not None else ""
            print(f"| {size} | {r['variant']} | {r['train_seconds']:.1f} | {ratio} | {first} | {later} | "
                  f"{r['wall']:.1f} |")
    print("\n| scoring | seconds | peak GPU MB |")
    print("|---|---|---|")
    for r in report["scoring"]:
        peak = f"{r['peak_gpu_mb']:,.0f}" if r.get("peak_gpu_mb") is not None else ""
        seconds = f"{r['seconds']:.3f}" if "seconds" in r else r["error"]
        print(f"| {r['lengths']} | {seconds} | {peak} |")
    alone, mixed = report["scoring"]
    if "seconds" in alone and "seconds" in mixed:
        print(f"mixed / alone: {mixed['seconds'] / alone['seconds']:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--bags", type=int, default=20_000, help="10-window bags")
    parser.add_argument("--long-bags", type=int, default=1_000, help="1,000-window bags")
    parser.add_argument("--long-windows", type=int, default=1_000)
    parser.add_argument("--huge", type=int, default=100_000, help="windows of the bag scored alone and mixed")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--timeout", type=int, default=150, help="seconds per case")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds for the whole run: a case gets what is left of it, later ones are skipped")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that every case runs")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu.json"))
    parser.add_argument("--scoring-case", help=argparse.SUPPRESS)  # json [device, lengths]: run it here
    args = parser.parse_args(argv)
    if args.scoring_case:
        print(json.dumps(scoring_case(*json.loads(args.scoring_case))))
        return 0
    if args.quick:
        args.epochs, args.bags, args.long_bags, args.long_windows, args.huge = 2, 200, 20, 100, 2_000
    report = {"environment": environment(args.device), "epochs": args.epochs, "training": {}, "scoring": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    deadline = time.perf_counter() + args.budget

    def timeout() -> float | None:
        """This case's limit: --timeout, or what is left of --budget (None: nothing left)."""
        left = deadline - time.perf_counter()
        return min(args.timeout, left) if left > 20 else None  # under 20 s no case finishes

    def record(row: dict, **where) -> None:
        print(json.dumps({**where, **row}), flush=True)
        out.write_text(json.dumps(report, indent=2))

    for lengths in ([args.huge], [args.huge, 5, 7, 9]):
        limit = timeout()
        row = run_scoring_case(args.device, lengths, limit) if limit else {"lengths": lengths, "error": "no budget"}
        report["scoring"].append(row)
        record(row)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {f"{n:,} x {windows:,}": write_bags(Path(tmp) / f"bags_{windows}.npz", n, windows)
                 for n, windows in ((args.bags, 10), (args.long_bags, args.long_windows))}
        for size in sizes:
            report["training"][size] = []
        for variant in args.variants.split(","):  # each variant at both sizes before the next variant
            for i, (size, data) in enumerate(sizes.items()):
                limit = timeout()
                row = (run_training_case(variant, data, Path(tmp) / f"run_{i}_{variant}", args, limit) if limit
                       else {"variant": variant, "error": "no budget"})
                report["training"][size].append(row)
                record(row, bags=size)
    print_tables(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
