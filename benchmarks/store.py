"""Datasets larger than memory: an on-disk store against the in-memory path, on >= 2,000,000 windows.

Writes random bags (default 200,000 bags x 10 windows x 256-d = 2,000,000 windows, 1.9 GiB as float32)
as a Parquet table (row group by row group) and as an .npz, then runs, each in a fresh process:
  convert       arcmil convert table.parquet -> store (float16), streamed chunk by chunk
  train memory  arcmil train --data bags.npz   (one epoch; the whole array in memory)
  train store   arcmil train --data store      (one epoch; windows read per batch)
  predict …     arcmil predict with the trained checkpoint on either
and reports wall seconds, training bags/s and each process's peak RSS next to the data size.

    python benchmarks/store.py --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_data(directory: Path, n_bags: int, n_windows: int, dim: int, chunk_bags: int = 10_000) -> None:
    """bags.npz (flat + lengths) and table.parquet, generated chunk by chunk with a fixed seed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    flat, labels, writer = [], [], None
    for start in range(0, n_bags, chunk_bags):
        count = min(chunk_bags, n_bags - start)
        y = rng.integers(0, 2, count)
        x = rng.standard_normal((count, n_windows, dim), dtype=np.float32)
        x[y == 1, 0, :8] += 1.0  # a weak witness window in positive bags: something to learn
        flat.append(x.reshape(-1, dim))
        labels.append(y)
        ids = np.repeat([f"b{i:07d}" for i in range(start, start + count)], n_windows)
        columns = {"bag_id": ids, "label": np.repeat(y, n_windows)}
        columns.update({f"emb_{j}": x.reshape(-1, dim)[:, j] for j in range(dim)})
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(directory / "table.parquet", table.schema)
        writer.write_table(table)
    writer.close()
    np.savez(directory / "bags.npz", embeddings=np.concatenate(flat), lengths=np.full(n_bags, n_windows),
             labels=np.concatenate(labels), bag_ids=np.array([f"b{i:07d}" for i in range(n_bags)]))


def child(argv: list[str], threads: int) -> dict:
    """Run ``arcmil argv`` in a fresh process; its wall seconds and peak RSS. The peak is the child's
    own VmHWM: Linux carries ru_maxrss across fork and exec, so it would include this process's."""
    code = ("import json, re, sys; from arcmil.cli import main; rc = main(sys.argv[1:]); "
            "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "print(json.dumps({'rc': rc, 'peak_rss_mb': hwm / 1024}))")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0 or '"rc": 0' not in proc.stdout:
        raise SystemExit(f"arcmil {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-bags", type=int, default=200_000)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--model", default="attention_mil")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="where the data goes (default: a temporary directory, removed after)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        tic = time.perf_counter()
        make_data(work, args.n_bags, args.windows, args.dim)
        n_windows = args.n_bags * args.windows
        data_mb = n_windows * args.dim * 4 / 2**20
        print(f"{n_windows:,} windows ({data_mb:,.0f} MB as float32) written in {time.perf_counter() - tic:.0f} s")
        train = ["train", "--model", args.model, "--epochs", "1", "--n-bootstrap", "0", "--no-progress"]
        rows = {"convert": child(["convert", "--data", str(work / "table.parquet"), "--out", str(work / "store")],
                                 args.threads)}
        rows["convert"]["store_mb"] = (work / "store" / "windows.bin").stat().st_size / 2**20
        for name, data in (("memory", work / "bags.npz"), ("store", work / "store")):
            rows[f"train {name}"] = child([*train, "--data", str(data), "--out", str(work / f"run_{name}")],
                                          args.threads)
            results = json.loads(next((work / f"run_{name}").glob("stage3_*_results.json")).read_text())
            epoch = results["history"][0]
            rows[f"train {name}"]["epoch_seconds"] = epoch["seconds"]
            rows[f"train {name}"]["train_bags_per_s"] = results["data"]["splits"]["train"]["n_bags"] / epoch["seconds"]
            checkpoint = next((work / f"run_{name}").glob("best_*.pth"))
            rows[f"predict {name}"] = child(["predict", "--checkpoint", str(checkpoint), "--data", str(data),
                                             "--out", str(work / f"pred_{name}.csv"), "--batch-size", "512"],
                                            args.threads)
            rows[f"predict {name}"]["bags_per_s"] = args.n_bags / rows[f"predict {name}"]["seconds"]

    print(f"\n{args.n_bags:,} bags x {args.windows} windows x {args.dim}-d = {n_windows:,} windows, {data_mb:,.0f} MB "
          f"as float32; {args.model}, one epoch, {args.threads} thread(s)")
    print("| step | wall s | peak RSS MB | peak RSS / data | throughput |")
    print("|---|---|---|---|---|")
    for step, r in rows.items():
        rate = (f"{r['train_bags_per_s']:,.0f} train bags/s (epoch {r['epoch_seconds']:.0f} s)"
                if "train_bags_per_s" in r else f"{r['bags_per_s']:,.0f} bags/s" if "bags_per_s" in r else
                f"store {r['store_mb']:,.0f} MB (float16)")
        print(f"| {step} | {r['seconds']:.0f} | {r['peak_rss_mb']:,.0f} | {r['peak_rss_mb'] / data_mb:.2f} | {rate} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n_bags": args.n_bags, "windows": args.windows, "dim": args.dim, "model": args.model,
                               "threads": args.threads, "data_mb_float32": data_mb, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
