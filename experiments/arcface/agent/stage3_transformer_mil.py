# %% [markdown]
# # Stage 3 — TransformerMIL
# Self-attention between windows, then attention pooling.
#
# Every section but the model block is identical across `stage3_attention_mil.py`,
# `stage3_transformer_mil.py` and `stage3_transmil.py` (the design note's rule: only the model
# block differs). Runs as a plain script or, cell by cell, in Jupyter. Settings by environment:
# `ARCMIL_DATA` (Stage-2 bag file; default: the built-in demo data), `ARCMIL_OUT` (default
# `runs/experiments`), `ARCMIL_EPOCHS` (default 10).

# %% 1. Environment & seed
import os

from arcmil.data import load_bags
from arcmil.demo import make_demo_bags
from arcmil.distributed import select_device
from arcmil.outputs import default_run_dir, staged_dir
from arcmil.pipeline import EvalConfig, finalize, make_loaders, prepare_data
from arcmil.report import results_row, write_run
from arcmil.train import TrainConfig, make_optimizer, seed_everything, train_model

DATA = os.environ.get("ARCMIL_DATA")
OUT = os.environ.get("ARCMIL_OUT", "runs/experiments")
cfg = TrainConfig(seed=0, batch_size=16, epochs=int(os.environ.get("ARCMIL_EPOCHS", 10)), patience=3)
evaluation = EvalConfig(normalize="l2", threshold_method="f1")
seed_everything(cfg.seed)
device = select_device(cfg.device)

# %% 2. Stage-2 bags & instance means (K embeddings per window are averaged by the reader)
bags = load_bags(DATA) if DATA else make_demo_bags()
data = prepare_data(bags, cfg, evaluation)  # stored or stratified 70/15/15 split; normalisation fitted on train
print(bags.summary())

# %% 3. Dataset / DataLoader (padded batches with masks)
loaders = make_loaders(data, cfg, device=device)  # training and validation bags stay on a GPU that holds them

# %% Model block: TransformerMIL
from arcmil.models import TransformerMIL, TransformerMILConfig

MODEL_NAME = "transformer_mil"
model = TransformerMIL(TransformerMILConfig(
    input_dim=bags.dim, d_model=128, nhead=4, num_layers=2, dim_feedforward=256, dropout_p=0.1, pos_enc="sin",
)).to(device)

# %% 4. Loss / optimizer / scheduler (weighted BCE, AdamW, ReduceLROnPlateau)
criterion = data.bags.label_space.criterion(data.parts["train"].labels)
optimizer, scheduler = make_optimizer(model, cfg, steps_per_epoch=len(loaders["train"]))

# %% 5. train_one_epoch / evaluate / train_model (early stopping restores the best state)
fit = train_model(model, loaders["train"], loaders["val"], criterion, optimizer, scheduler, cfg, device,
                  desc=model.config.tag())

# %% 6. Final pipeline: validation threshold, test report, outputs
result = finalize(MODEL_NAME, model, data, criterion, fit, cfg, evaluation, device)
run_dir = default_run_dir(OUT, result.tag)
with staged_dir(run_dir) as tmp:
    write_run(tmp, result)
row = results_row(result)
print({key: row[key] for key in ("tag", "threshold", "test_roc_auc", "test_pr_auc", "test_f1")})
print(f"outputs in {run_dir}")
