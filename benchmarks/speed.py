"""Training and scoring throughput: arcmil's loop against the naive notebook loop, same models.

Random 10 x 256 bags (the note's setting). For each model, in this one process:
  - naive: a per-item Dataset of tensors + torch's default DataLoader (default collation), AdamW,
    the usual zero_grad/backward/step loop; scoring under torch.no_grad();
  - arcmil: arcmil.train.train_one_epoch / arcmil.scoring.evaluate over arcmil's packed BagLoader
    (vectorised batches, inference_mode), with its optimizer.
Reports bags/s (median over repeats), the arcmil/naive ratio, FLOPs per bag
(torch.utils.flop_counter) and the achieved GFLOP/s next to this machine's measured matrix-multiply
rate at the same thread count.

    python benchmarks/speed.py --threads 1

``--whole-process``: what a user waits for. ``arcmil train --model transformer_mil`` on 20,000 random
10-window bags for 4 epochs (patience off) against benchmarks/notebook_loop.py (the note's
TransformerMIL in a plain per-item DataLoader loop, the same epochs, validation each epoch), each as a
fresh process with ``--threads`` threads, alternated, median of ``--repeats``; imports included.

    python benchmarks/speed.py --whole-process --threads 1 --repeats 5

``--ops``: operators per training step (torch.profiler) of arcmil's transformer_mil step and of the
note's loop step (its TransformerMIL, a batch moved with ``.to``, Adam), counting the operators that
compute (not views, allocations or host reads): on a GPU each launches at least one kernel, and at
batch 16 x 10 windows launches, not arithmetic, bound a step (writes speed_ops.json).

    python benchmarks/speed.py --ops
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
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from arcmil.data import BagSet, Normalizer, make_loader
from arcmil.models import build_model
from arcmil.scoring import evaluate
from arcmil.labels import BINARY
from arcmil.train import TrainConfig, make_optimizer, train_one_epoch

MODELS = ("attention_mil", "transformer_mil", "transmil")


class TensorBags(Dataset):
    """The notebook way: one (n, D) tensor and one label per item."""

    def __init__(self, bags, labels):
        self.bags, self.labels = [torch.from_numpy(b) for b in bags], torch.as_tensor(labels, dtype=torch.float32)

    def __len__(self):
        return len(self.bags)

    def __getitem__(self, i):
        return self.bags[i], self.labels[i]


def random_bags(n: int, windows: int, dim: int, seed: int = 0) -> BagSet:
    """``n`` bags of ``windows`` x ``dim`` standard-normal windows with random binary labels."""
    rng = np.random.default_rng(seed)
    return BagSet([rng.standard_normal((windows, dim)).astype(np.float32) for _ in range(n)],
                  rng.integers(0, 2, n), np.array([f"b{i}" for i in range(n)]))


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - tic)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_per_bag(model, x: torch.Tensor, train: bool) -> float:
    model.train(train)
    with FlopCounterMode(display=False) as counter:
        if train:
            model(x)[0].sum().backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


def naive_train_epoch(model, loader, criterion, optimizer) -> None:
    model.train()
    for x, y in loader:
        logits, _ = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def naive_score(model, loader) -> None:
    model.eval()
    with torch.no_grad():
        for x, _ in loader:
            torch.sigmoid(model(x)[0])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def bench_model(name: str, bags: BagSet, cfg: TrainConfig, score_batch: int, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(name, input_dim=bags.dim)
    criterion = BINARY.criterion(bags.labels)
    n = len(bags)
    # the naive loop sees the same (already normalised) windows: only the machinery differs
    normalised = Normalizer("l2")(bags)
    dataset = TensorBags(normalised.bags, bags.labels)
    naive_train = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True)
    naive_eval = DataLoader(dataset, batch_size=score_batch)
    naive_opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    fast_train = make_loader(bags, cfg.batch_size, shuffle=True, seed=seed, normalizer=Normalizer("l2"))
    fast_eval = make_loader(bags, score_batch, normalizer=Normalizer("l2"))
    fast_opt, _ = make_optimizer(model, cfg, len(fast_train))

    row = {"model": name, "n_bags": n}
    seconds = {
        "naive_train": timed(lambda: naive_train_epoch(model, naive_train, criterion, naive_opt), repeats),
        "arcmil_train": timed(lambda: train_one_epoch(model, fast_train, criterion, fast_opt, "cpu"), repeats),
        "naive_score": timed(lambda: naive_score(model, naive_eval), repeats),
        "arcmil_score": timed(lambda: evaluate(model, fast_eval), repeats),
    }
    for key, s in seconds.items():
        row[f"{key}_bags_per_s"] = n / s
    x = torch.from_numpy(np.stack(normalised.bags[: cfg.batch_size]))
    row["train_mflop_per_bag"] = flops_per_bag(model, x, train=True) / 1e6
    row["score_mflop_per_bag"] = flops_per_bag(model, x, train=False) / 1e6
    row["train_speedup"] = row["arcmil_train_bags_per_s"] / row["naive_train_bags_per_s"]
    row["score_speedup"] = row["arcmil_score_bags_per_s"] / row["naive_score_bags_per_s"]
    for kind in ("train", "score"):
        row[f"arcmil_{kind}_gflops"] = row[f"arcmil_{kind}_bags_per_s"] * row[f"{kind}_mflop_per_bag"] / 1e3
        row[f"naive_{kind}_gflops"] = row[f"naive_{kind}_bags_per_s"] * row[f"{kind}_mflop_per_bag"] / 1e3
    return row


def profile_steps(name: str, bags: BagSet, cfg: TrainConfig, steps: int = 50) -> dict:
    """Where one arcmil training step's time goes (torch.profiler, self CPU time per step)."""
    from torch.profiler import profile

    torch.manual_seed(0)
    model = build_model(name, input_dim=bags.dim)
    criterion, (optimizer, _) = BINARY.criterion(bags.labels), make_optimizer(model, cfg, steps)
    loader = make_loader(bags.subset(np.arange(cfg.batch_size * steps)), cfg.batch_size, shuffle=True,
                         normalizer=Normalizer("l2"))
    train_one_epoch(model, loader, criterion, optimizer, "cpu")  # warm-up
    with profile() as prof:
        tic = time.perf_counter()
        train_one_epoch(model, loader, criterion, optimizer, "cpu")
        step_ms = (time.perf_counter() - tic) / steps * 1e3
    self_ms = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    matmul = sum(self_ms.get(k, 0.0) for k in ("aten::mm", "aten::addmm", "aten::bmm"))
    return {"model": name, "step_ms": step_ms, "matmul_ms": matmul,
            "dropout_rng_ms": self_ms.get("aten::bernoulli_", 0.0),
            "top_ops_ms": dict(sorted(self_ms.items(), key=lambda kv: -kv[1])[:8])}


def whole_process(args) -> dict:
    """Wall seconds of ``arcmil train`` and of the notebook loop as fresh processes (see the module doc)."""
    from arcmil.data import save_bags

    here = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(here)}
    n = args.whole_bags
    bags = random_bags(n, args.windows, args.dim)
    walls = {"arcmil": [], "notebook": [], "arcmil_train_seconds": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = save_bags(bags, Path(tmp) / "bags.npz")
        for r in range(args.repeats):
            out = Path(tmp) / f"run{r}"
            commands = {"arcmil": [sys.executable, "-m", "arcmil", "train", "--model", "transformer_mil", "--data",
                                   str(data), "--epochs", str(args.epochs), "--patience", str(args.epochs),
                                   "--no-progress", "--device", "cpu", "--out", str(out)],
                        "notebook": [sys.executable, str(here / "notebook_loop.py"), str(data), "--epochs",
                                     str(args.epochs)]}
            for name, command in commands.items():
                tic = time.perf_counter()
                subprocess.run(command, check=True, env=env, capture_output=True)
                walls[name].append(time.perf_counter() - tic)
            results = json.loads((out / "stage3_transformer_mil_results.json").read_text())
            walls["arcmil_train_seconds"].append(results["train_seconds"])
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "arcmil", "--help"], check=True, env=env, capture_output=True)
    row = {key: statistics.median(v) for key, v in walls.items()}
    row.update(runs=walls, help_seconds=time.perf_counter() - tic, speedup=row["notebook"] / row["arcmil"],
               n_bags=n, epochs=args.epochs, threads=args.threads, repeats=args.repeats, torch=torch.__version__)
    print(f"{n} bags of {args.windows} x {args.dim}, {args.epochs} epochs, {args.threads} thread(s), median of "
          f"{args.repeats} fresh processes each")
    print("| process | wall s | of which training s |")
    print("|---|---|---|")
    print(f"| notebook loop (note's TransformerMIL) | {row['notebook']:.1f} | |")
    print(f"| arcmil train --model transformer_mil | {row['arcmil']:.1f} | {row['arcmil_train_seconds']:.1f} |")
    print(f"speed-up {row['speedup']:.2f}x; `arcmil --help` {row['help_seconds']:.2f} s")
    return row


# operators that only describe or allocate tensors (or read a host scalar): no kernel of their own
METADATA_OPS = {"aten::" + name for name in (
    "as_strided", "view", "_unsafe_view", "_reshape_alias", "resolve_conj", "resolve_neg", "empty", "empty_strided",
    "empty_like", "lift_fresh", "resize_", "to", "detach", "alias", "t", "transpose", "expand", "permute",
    "unsqueeze", "squeeze", "slice", "select", "reshape", "contiguous", "_local_scalar_dense", "item",
    "scalar_tensor", "is_nonzero")}


def compute_ops(fn) -> dict[str, int]:
    """Operators that compute in one call of ``fn`` (after one warm-up call): each profiled aten operator
    outside METADATA_OPS none of whose children computes (a composite operator counts through the
    operators it calls)."""
    from torch.profiler import profile

    fn()
    with profile() as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in METADATA_OPS:
            continue
        if any(child.name.startswith("aten::") and child.name not in METADATA_OPS for child in event.cpu_children):
            continue
        counts[event.name] = counts.get(event.name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def operator_counts(batch_size: int = 16, windows: int = 10, dim: int = 256, steps: int = 20) -> dict:
    """Per training step of ``steps`` on random bags: arcmil's transformer_mil step (its loader, loss,
    fused AdamW and schedule) against the note's (its TransformerMIL, batches moved with ``.to``, Adam);
    and each model's forward + backward alone on one batch, where the optimizers do not count."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from note_models import NoteTransformerMIL

    n = batch_size * steps
    bags = random_bags(n, windows, dim)
    torch.manual_seed(0)
    model = build_model("transformer_mil", input_dim=dim)
    criterion = BINARY.criterion(bags.labels)
    optimizer, scheduler = make_optimizer(model, TrainConfig(batch_size=batch_size), steps)
    loader = make_loader(bags, batch_size, shuffle=True, normalizer=Normalizer("l2"))
    note = NoteTransformerMIL(input_dim=dim)
    note_optimizer, note_criterion = torch.optim.Adam(note.parameters(), lr=1e-3), torch.nn.BCEWithLogitsLoss()
    x = torch.from_numpy(np.stack(Normalizer("l2")(bags).bags))
    y = torch.as_tensor(bags.labels, dtype=torch.float32)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)

    def note_epoch():
        note.train()
        for s in range(0, n, batch_size):
            note_optimizer.zero_grad()
            note_criterion(note(x[s:s + batch_size].to("cpu"))[0], y[s:s + batch_size].to("cpu")).backward()
            note_optimizer.step()

    counts = {
        "arcmil_step": compute_ops(lambda: train_one_epoch(model, loader, criterion, optimizer, "cpu",
                                                           batch_scheduler=scheduler)),
        "note_step": compute_ops(note_epoch),
        "arcmil_forward_backward": compute_ops(
            lambda: criterion(model(x[:batch_size], mask[:batch_size])[0], y[:batch_size]).backward()),
        "note_forward_backward": compute_ops(
            lambda: note_criterion(note(x[:batch_size])[0], y[:batch_size]).backward()),
    }
    per_step = {key: {op: v / steps for op, v in ops.items()} if key.endswith("_step") else ops
                for key, ops in counts.items()}
    return {"batch_size": batch_size, "windows": windows, "torch": torch.__version__,
            "totals": {key: sum(ops.values()) for key, ops in per_step.items()}, "operators": per_step}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-bags", type=int, default=2048)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--score-batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--profile", action="store_true", help="also profile where a training step's time goes")
    parser.add_argument("--whole-process", action="store_true", help="time arcmil train and the notebook loop as "
                        "whole processes (writes speed_whole_process.json)")
    parser.add_argument("--ops", action="store_true", help="count the operators of one training step, arcmil's "
                        "and the note's (writes speed_ops.json)")
    parser.add_argument("--whole-bags", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=4, help="--whole-process: epochs of each run")
    parser.add_argument("--out", help="JSON to write (default benchmarks/results/speed[_whole_process].json)")
    args = parser.parse_args(argv)
    results = Path(__file__).parent / "results"
    if args.ops:
        counts = operator_counts()
        print(f"operators that compute, batch {counts['batch_size']} x {counts['windows']} windows, "
              f"torch {counts['torch']}, CPU")
        print("| | arcmil transformer_mil | the note's TransformerMIL |")
        print("|---|---|---|")
        for part in ("step", "forward_backward"):
            print(f"| {part.replace('_', ' + ')} | {counts['totals']['arcmil_' + part]:.0f} | "
                  f"{counts['totals']['note_' + part]:.0f} |")
        for key, ops in counts["operators"].items():
            print(f"  {key}: " + ", ".join(f"{name[6:]} {v:.0f}" for name, v in list(ops.items())[:8]))
        out = Path(args.out or results / "speed_ops.json")
        out.write_text(json.dumps(counts, indent=2))
        return 0
    if args.whole_process:
        out = Path(args.out or results / "speed_whole_process.json")
        out.write_text(json.dumps(whole_process(args), indent=2))
        return 0
    torch.set_num_threads(args.threads)
    bags = random_bags(args.n_bags, args.windows, args.dim)
    cfg = TrainConfig(batch_size=16)
    peak = matmul_gflops()
    rows = [bench_model(m, bags, cfg, args.score_batch, args.repeats, seed=0) for m in args.models.split(",")]
    for row in rows:
        row["score_fraction_of_matmul"] = row["arcmil_score_gflops"] / peak
        row["naive_train_fraction_of_matmul"] = row["naive_train_gflops"] / peak
        row["arcmil_train_fraction_of_matmul"] = row["arcmil_train_gflops"] / peak
    print(f"{args.n_bags} bags of {args.windows} x {args.dim}, train batch {cfg.batch_size}, score batch "
          f"{args.score_batch}, {args.threads} thread(s), torch {torch.__version__}; matmul {peak:.1f} GFLOP/s")
    header = ("model", "train naive", "train arcmil", "speed-up", "GFLOP/s (of matmul)", "score naive",
              "score arcmil", "speed-up", "GFLOP/s (of matmul)", "MFLOP/bag train/score")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['naive_train_bags_per_s']:.0f} | {r['arcmil_train_bags_per_s']:.0f} | "
              f"{r['train_speedup']:.2f}x | {r['arcmil_train_gflops']:.1f} ({r['arcmil_train_fraction_of_matmul']:.0%})"
              f" | {r['naive_score_bags_per_s']:.0f} | {r['arcmil_score_bags_per_s']:.0f} | {r['score_speedup']:.2f}x"
              f" | {r['arcmil_score_gflops']:.1f} ({r['score_fraction_of_matmul']:.0%}) | "
              f"{r['train_mflop_per_bag']:.2f} / {r['score_mflop_per_bag']:.2f} |")
    profiles = [profile_steps(m, bags, cfg) for m in args.models.split(",")] if args.profile else []
    for p in profiles:
        print(f"{p['model']}: {p['step_ms']:.2f} ms per training step under the profiler, of which matrix products "
              f"{p['matmul_ms']:.2f} ms and dropout masks {p['dropout_rng_ms']:.2f} ms (self CPU time)")
    out = Path(args.out or results / "speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "matmul_gflops": peak,
                               "n_bags": args.n_bags, "windows": args.windows, "dim": args.dim,
                               "train_batch": cfg.batch_size, "score_batch": args.score_batch, "rows": rows,
                               "profiles": profiles}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
