"""The note's experiment scripts: identical but for the model block, and runnable as plain scripts."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from arcmil import MILClassifier
from arcmil.data import load_bags, save_bags
from arcmil.demo import make_demo_bags

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {name: ROOT / "experiments" / "arcface" / "agent" / f"stage3_{name}.py"
           for name in ("attention_mil", "transformer_mil", "transmil")}


def shared_part(text: str) -> str:
    """The script without its title lines and its model block."""
    text = re.sub(r"^# # Stage 3 .*\n# .*\n", "", text, count=1, flags=re.M)
    return re.sub(r"# %% Model block.*?(?=# %% 4\.)", "", text, flags=re.S)


def test_scripts_differ_only_in_the_model_block():
    texts = {name: path.read_text() for name, path in SCRIPTS.items()}
    shared = {shared_part(t) for t in texts.values()}
    assert len(shared) == 1
    for name, text in texts.items():
        assert f'MODEL_NAME = "{name}"' in text
        cells = re.findall(r"^# %% (\S.*)$", text, flags=re.M)
        assert [c.split(".")[0] for c in cells if c[0].isdigit()] == ["1", "2", "3", "4", "5", "6"]


def test_script_runs_end_to_end(tmp_path):
    data = save_bags(make_demo_bags(n_bags=80, seed=4), tmp_path / "bags.parquet")
    env = {**os.environ, "ARCMIL_DATA": str(data), "ARCMIL_OUT": str(tmp_path / "out"), "ARCMIL_EPOCHS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPTS["transmil"])], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = (tmp_path / "out").iterdir()
    assert run.name.startswith("transmil_cls_d128_h4_L2_ff256_drop01_sin_")
    results = json.loads((run / "stage3_transmil_results.json").read_text())
    assert results["epochs_run"] == 1 and results["train_config"]["epochs"] == 1  # ARCMIL_EPOCHS reached the run
    # the saved checkpoint is the model that wrote the predictions
    predictions = pd.read_csv(run / "predictions.csv").set_index("bag_id")  # validation and test bags
    bags = load_bags(data)
    again = pd.Series(MILClassifier.load(run / "best_transmil.pth").predict_proba(bags)[:, 1], index=bags.bag_ids)
    np.testing.assert_allclose(again[predictions.index], predictions["prob"], atol=1e-6)
