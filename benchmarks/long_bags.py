"""Time and peak memory of one long bag, N = 10 … 100,000 windows, for each attention option.

For transformer_mil and transmil (default sizes: d_model 128, 4 heads, 2 layers, 256-d input) and
attention = full (fused / chunked exact attention), nystrom, and the design note's formulation (every
layer materialises its (N, N) attention weights, as ``need_weights=True`` does), each case runs in a
fresh subprocess and reports
  - score: one forward pass under inference_mode (eval mode);
  - train: one forward + backward pass in training mode (dropout 0.1);
with wall seconds and the process's peak RSS (ru_maxrss, so the Python/torch runtime is included) and
the peak above the RSS just before the pass. Cases whose (N, N) weights alone exceed --note-limit-gb
are not run and marked so.

    python benchmarks/long_bags.py --threads 2

``--mixed N`` instead times the scoring path that predict, evaluation and the Python API share
(``scoring_loader`` + ``evaluate``, batch size 16) on one N-window bag alone and on the same bag with
three short ones (5, 7 and 9 windows), each in a fresh subprocess:

    python benchmarks/long_bags.py --mixed 100000 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = (10, 100, 1_000, 10_000, 100_000)
MODELS = ("transformer_mil", "transmil")
OPTIONS = ("full", "nystrom", "note")


def rss_mb() -> float:
    """The current resident set size."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(model_name: str, option: str, n: int, mode: str, threads: int) -> dict:
    import torch

    from arcmil.models import build_model

    class NoteAttention(torch.nn.Module):
        """The note's layer: full softmax weights (B, H, T, T) kept and head-averaged for inspection."""

        def __init__(self, dropout_p):
            super().__init__()
            self.dropout_p = dropout_p

        def forward(self, q, k, v, key_mask):
            scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
            probs = torch.softmax(scores.masked_fill(~key_mask[:, None, None, :], float("-inf")), -1)
            self.weights = probs.mean(dim=1)  # (B, T, T), what need_weights=True returns
            return torch.nn.functional.dropout(probs, self.dropout_p, self.training) @ v

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, input_dim=256, attention="nystrom" if option == "nystrom" else "full")
    if option == "note":
        for layer in model.layers:
            layer.attention = NoteAttention(model.config.dropout_p)
    x = torch.randn(1, n, 256)
    mask = torch.ones(1, n, dtype=torch.bool)
    before = rss_mb()
    tic = time.perf_counter()
    if mode == "score":
        model.eval()
        with torch.inference_mode():
            logits, weights = model(x, mask)
    else:
        model.train()
        logits, weights = model(x, mask)
        logits.sum().backward()
    seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert torch.isfinite(logits).all() and weights.shape == (1, n)
    return {"seconds": seconds, "peak_rss_mb": peak, "peak_above_start_mb": peak - before}


def run_scoring_case(model_name: str, lengths: list[int], threads: int) -> dict:
    """Score bags of these lengths as predict does; seconds and peak RSS of the whole scoring pass."""
    import numpy as np
    import torch

    from arcmil.data import BagSet, scoring_loader
    from arcmil.models import build_model
    from arcmil.scoring import evaluate

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, input_dim=256)
    rng = np.random.default_rng(0)
    bags = BagSet([rng.standard_normal((n, 256)).astype(np.float32) for n in lengths], None,
                  np.array([f"bag{i}" for i in range(len(lengths))]))
    before = rss_mb()
    tic = time.perf_counter()
    scored = evaluate(model, scoring_loader(bags, 16))
    seconds = time.perf_counter() - tic
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert np.isfinite(scored.probs).all() and [len(w) for w in scored.weights] == lengths
    return {"seconds": seconds, "peak_rss_mb": peak, "peak_above_start_mb": peak - before}


def mixed(n: int, models: list[str], threads: int, timeout: int, out: Path) -> int:
    """One long bag alone vs with three short batch-mates: the target is within 10% of alone, < 2 GB."""
    rows = []
    for model in models:
        for case, lengths in (("alone", [n]), ("mixed", [n, 5, 7, 9])):
            proc = subprocess.run([sys.executable, __file__, "--scoring-case", f"{model};{lengths};{threads}"],
                                  capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                raise SystemExit(f"{model} {case}: " + (proc.stderr.strip().splitlines() or ["killed"])[-1])
            rows.append({"model": model, "case": case, "lengths": lengths,
                         **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nscoring one {n:,}-window bag alone and with 3 short ones (5, 7, 9), batch size 16, {threads} thread(s)")
    print("| model | alone s | alone peak MB | mixed s | mixed peak MB | mixed / alone |")
    print("|---|---|---|---|---|---|")
    for alone, mix in zip(rows[::2], rows[1::2]):
        print(f"| {alone['model']} | {alone['seconds']:.1f} | {alone['peak_rss_mb']:.0f} | {mix['seconds']:.1f} | "
              f"{mix['peak_rss_mb']:.0f} | {mix['seconds'] / alone['seconds']:.2f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": threads, "n_windows": n, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--modes", default="score,train")
    parser.add_argument("--note-limit-gb", type=float, default=8.0,
                        help="skip note-formulation cases whose (N, N) weights alone exceed this")
    parser.add_argument("--full-train-limit", type=int, default=10_000,
                        help="longest bag trained with exact attention (its time grows as N^2: ~1 h at 100k, 1 thread)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "long_bags.json"))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # model,option,n,mode,threads: run one case here
    parser.add_argument("--mixed", type=int, metavar="N",
                        help="time the scoring path on one N-window bag alone and with 3 short ones")
    parser.add_argument("--scoring-case", help=argparse.SUPPRESS)  # model;[lengths];threads
    args = parser.parse_args(argv)
    if args.scoring_case:
        model, lengths, threads = args.scoring_case.split(";")
        print(json.dumps(run_scoring_case(model, json.loads(lengths), int(threads))))
        return 0
    if args.mixed:
        out = Path(args.out).with_name("long_bags_mixed.json")
        return mixed(args.mixed, args.models.split(","), args.threads, args.timeout, out)
    if args.case:
        model, option, n, mode, threads = args.case.split(",")
        print(json.dumps(run_case(model, option, int(n), mode, int(threads))))
        return 0

    rows = []
    for model in args.models.split(","):
        for option in args.options.split(","):
            for n in map(int, args.sizes.split(",")):
                for mode in args.modes.split(","):
                    row = {"model": model, "attention": option, "n_windows": n, "mode": mode}
                    weights_gb = 4 * 4 * (n + 1) ** 2 / 2**30  # (1, H=4, T, T) float32 probabilities
                    if option == "note" and weights_gb > args.note_limit_gb:
                        row["status"] = f"not run: (N, N) weights alone need {weights_gb:.0f} GB per layer"
                    elif option != "nystrom" and mode == "train" and n > args.full_train_limit:
                        row["status"] = f"not run (N > --full-train-limit {args.full_train_limit})"
                    else:
                        case = f"{model},{option},{n},{mode},{args.threads}"
                        try:
                            proc = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True,
                                                  text=True, timeout=args.timeout)
                            if proc.returncode == 0:
                                row.update(json.loads(proc.stdout.strip().splitlines()[-1]), status="ok")
                            else:
                                row["status"] = f"failed (exit {proc.returncode}): " + (
                                    proc.stderr.strip().splitlines() or ["killed"])[-1][:120]
                        except subprocess.TimeoutExpired:
                            row["status"] = f"not finished in {args.timeout} s"
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    print(f"\none bag of N windows, 256-d, default model sizes, {args.threads} thread(s)")
    print("| model | attention | N | score s | score peak MB | train s | train peak MB |")
    print("|---|---|---|---|---|---|---|")
    key = lambda r: (r["model"], r["attention"], r["n_windows"])  # noqa: E731
    by_case = {}
    for r in rows:
        by_case.setdefault(key(r), {})[r["mode"]] = r

    def cell(r, field, fmt):
        """The measurement, or why there is none (said once, in the seconds column)."""
        if r is None:
            return "—"
        if r.get("status") == "ok":
            return fmt.format(r[field])
        return r["status"] if field == "seconds" else "—"

    for (model, option, n), modes in by_case.items():
        s, t = modes.get("score"), modes.get("train")
        print(f"| {model} | {option} | {n:,} | {cell(s, 'seconds', '{:.3f}')} | {cell(s, 'peak_rss_mb', '{:.0f}')} | "
              f"{cell(t, 'seconds', '{:.3f}')} | {cell(t, 'peak_rss_mb', '{:.0f}')} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
