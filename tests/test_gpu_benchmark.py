"""benchmarks/gpu.py runs where GPU time is scarce: every case it times must already run here, on CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, device_check.sh runs gpu.py itself")
def test_the_gpu_benchmark_runs_each_case_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
                           "--variants", "note,fp32", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report["training"]) == ["200 x 10", "20 x 100"]
    for rows in report["training"].values():
        assert [r["variant"] for r in rows] == ["note", "fp32"]
        assert all("error" not in r and r["train_seconds"] > 0 for r in rows), rows
        assert rows[1]["first_epoch"] > 0 and rows[1]["later_epoch_median"] > 0  # arcmil's per-epoch history
    assert [r["lengths"] for r in report["scoring"]] == [[2000], [2000, 5, 7, 9]]
    assert all(r["seconds"] > 0 for r in report["scoring"])
    assert "| 200 x 10 | fp32 |" in proc.stdout and "mixed / alone:" in proc.stdout


def test_a_spent_budget_skips_the_cases_and_still_writes_the_report(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
                           "--budget", "0", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = [r for size in report["training"].values() for r in size] + report["scoring"]
    assert len(rows) == 2 * 5 + 2 and all(r["error"] == "no budget" for r in rows)
    assert "| 200 x 10 | fp32 | no budget |" in proc.stdout
