"""The plain notebook loop that speed.py --whole-process times against ``arcmil train``: the design note's
TransformerMIL on an .npz of equal-length bags, per-item Dataset + default DataLoader, Adam, validation
loss each epoch (best state kept), test ROC-AUC at the end. No arcmil import: only what a notebook has.

    python benchmarks/notebook_loop.py BAGS.npz --epochs 4 [--device cuda]

Its last line is JSON: the training loop's seconds (validation included) for gpu.py.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset

from note_models import NoteTransformerMIL, note_scores, train_note_loop


class Bags(Dataset):
    def __init__(self, bags: np.ndarray, labels: np.ndarray):
        self.bags, self.labels = torch.from_numpy(bags), torch.from_numpy(labels.astype(np.float32))

    def __len__(self):
        return len(self.bags)

    def __getitem__(self, i):
        return self.bags[i], self.labels[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="where the model runs; each batch is moved there")
    args = parser.parse_args()
    tic = time.perf_counter()
    torch.manual_seed(0)
    data = np.load(args.data)
    lengths, labels = data["lengths"], data["labels"]
    bags = data["embeddings"].reshape(len(lengths), int(lengths[0]), -1)  # equal lengths
    bags = bags / np.linalg.norm(bags, axis=-1, keepdims=True)
    index = np.arange(len(labels))
    train, rest = train_test_split(index, test_size=0.3, stratify=labels, random_state=0)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=0)
    loaders = {name: DataLoader(Bags(bags[part], labels[part]), batch_size=16, shuffle=name == "train")
               for name, part in (("train", train), ("val", val), ("test", test))}
    # the note's 128-position table, longer only for longer bags
    model = NoteTransformerMIL(input_dim=bags.shape[-1], max_len=max(128, bags.shape[1])).to(args.device)
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # outside the loop's time, as arcmil's
    loop = time.perf_counter()
    train_note_loop(model, loaders, criterion, epochs=args.epochs, patience=None, device=args.device,
                    optimizer=optimizer)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    loop = time.perf_counter() - loop
    probs, y, _ = note_scores(model, loaders["test"], criterion, args.device)
    print(f"test ROC-AUC {roc_auc_score(y, probs):.4f}, {time.perf_counter() - tic:.1f} s after imports")
    print(json.dumps({"train_seconds": loop}))


if __name__ == "__main__":
    main()
